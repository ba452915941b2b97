"""pipeline.memory: a run's allocator settings are set on entering the first run and undone after the last."""
import pyarrow as pa
import pytest

from pipeline import memory


def _jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
        return True
    except NotImplementedError:
        return False


def test_kept_switches_arrow_to_jemalloc_and_back_even_on_error():
    before = pa.default_memory_pool().backend_name
    with pytest.raises(RuntimeError):
        with memory.kept():
            inside = pa.default_memory_pool().backend_name
            with memory.kept():  # a nested run leaves the outer one's settings alone
                pass
            assert pa.default_memory_pool().backend_name == inside
            pa.array(range(100_000))  # allocations work under the run's settings
            raise RuntimeError("the run failed")
    assert inside == ("jemalloc" if _jemalloc() else before)
    assert pa.default_memory_pool().backend_name == before
    assert memory._depth == 0


def test_a_run_under_kept_writes_what_it_would_write_without(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    t = pa.table({"x": np.arange(300_000), "s": [f"u{i % 977}" for i in range(300_000)]})
    pq.write_table(t, tmp_path / "a.parquet")
    with memory.kept():
        pq.write_table(pq.read_table(tmp_path / "a.parquet"), tmp_path / "b.parquet")
    assert pq.read_table(tmp_path / "b.parquet").equals(t)
