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


@pytest.mark.skipif(not _jemalloc(), reason="this Arrow build has no jemalloc")
def test_arrow_allocates_from_jemalloc_inside_only():
    jem = pa.jemalloc_memory_pool()

    def grows() -> bool:  # a 8 MB array built from Python objects: allocated, not a view
        before = jem.bytes_allocated()
        arr = pa.array(list(range(1_000_000)), pa.int64())
        return jem.bytes_allocated() - before >= arr.nbytes

    with memory.kept():
        assert grows()
    assert not grows()
