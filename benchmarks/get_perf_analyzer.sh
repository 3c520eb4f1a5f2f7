#!/bin/sh
# Fetch Triton's perf_analyzer (the C++ load generator) into benchmarks/.perf_analyzer/ and print the
# path of a wrapper to pass as `torchwire bench --perf-analyzer PATH`.
#
# tritonclient's wheels carried the binary up to 2.41 (later ones moved it to a container image).
# It links libb64 (Debian: libb64-0d, installed here with apt) and libcudart.so.12, which only
# has to load (no GPU is used): it comes from PyPI's nvidia-cuda-runtime-cu12 wheel.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/.perf_analyzer"
pip="${PIP:-$here/../.venv/bin/pip}"
mkdir -p "$dest/wheels"
if ! ldconfig -p | grep -q libb64.so.0d; then
    apt-get install -y -q libb64-0d >/dev/null
fi
"$pip" download -q --no-deps -d "$dest/wheels" tritonclient==2.41.0 nvidia-cuda-runtime-cu12
cd "$dest"
python3 - <<'PY'
import glob, zipfile
for wheel in glob.glob("wheels/*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith("/bin/perf_analyzer") or name.endswith("/libcudart.so.12"):
                with open(name.rsplit("/", 1)[1], "wb") as out:
                    out.write(archive.read(name))
PY
chmod +x perf_analyzer
cat > run <<SH
#!/bin/sh
LD_LIBRARY_PATH="$dest\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/perf_analyzer" "\$@"
SH
chmod +x run
"$dest/run" --version >/dev/null 2>&1 || "$dest/run" -h 2>&1 | grep -q "Usage" || { echo "perf_analyzer does not start" >&2; exit 1; }
echo "$dest/run"
