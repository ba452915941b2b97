# Source this before any prefect command:  source scripts/prefect-env.sh
# Project-local Prefect home, telemetry off, local server on 127.0.0.1.
export PREFECT_HOME="${PREFECT_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.prefect}"
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export HF_HUB_OFFLINE=1
export PREFECT_SERVER_API_HOST=127.0.0.1
export PREFECT_SERVER_API_PORT="${PREFECT_SERVER_API_PORT:-4200}"
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_SERVER_API_PORT}/api"
