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
    # Not -DGGML_NATIVE=ON: on this machine class it turns on AMX, whose tile configuration
    # faults under the hypervisor (every llama.cpp program dies on its first product). The
    # same instruction sets verre uses instead: AVX2, AVX-512 (VNNI, VBMI, BF16), no AMX.
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON \
        -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >/dev/null
    cmake --build "$build" -j"$(nproc)" --target llama-bench llama-quantize llama-server
fi
[ -x "$verre" ] || cargo build --release --bin verre
