# Shared by scripts/serve and scripts/test: make sure .venv exists and holds
# the project with the wanted extras. A stamp file keyed on pyproject.toml
# makes a second run skip pip entirely.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"

python_bin="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python_bin" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi

spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
stamp="$venv/.ringbus-installed-${extras:-base}"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --editable "$spec"
    echo "$want" > "$stamp"
fi
