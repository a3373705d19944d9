# Sourced by the bench/compare-*.sh scripts: builds llama.cpp's llama-bench, llama-quantize
# and llama-server once, from the source vendored in the PyPI sdist of llama-cpp-python, into
# $VERRE_BENCH_CACHE (default ~/.cache/verre-bench), and the verre release binary if missing.
# Sets: cache, version, build. Expects: verre (the path of the verre binary).
cache="${VERRE_BENCH_CACHE:-$HOME/.cache/verre-bench}"
version=0.3.36
build="$cache/llama.cpp-$version/build"

if [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-server" ] || [ ! -x "$build/bin/llama-quantize" ]; then
    mkdir -p "$cache"
    if ! command -v cmake >/dev/null; then
        python3 -m venv "$cache/venv"
        "$cache/venv/bin/pip" install --quiet cmake ninja
        export PATH="$cache/venv/bin:$PATH"
    fi
    src="$cache/llama.cpp-$version/src"
    if [ ! -f "$src/CMakeLists.txt" ]; then
        python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$cache"
        mkdir -p "$src"
        tar -xzf "$cache/llama_cpp_python-$version.tar.gz" -C "$src" --strip-components=3 \
            "llama_cpp_python-$version/vendor/llama.cpp"
    fi
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >/dev/null
    cmake --build "$build" -j"$(nproc)" --target llama-bench llama-quantize llama-server
fi
[ -x "$verre" ] || cargo build --release --bin verre
