# The WebAssembly components, built with clang for wasm32 (components/build.py); the modules do
# not depend on the CPU, so this derivation's output is the same on every system.
{ lib, stdenvNoCC, python3, llvmPackages, lld, src, version }:
stdenvNoCC.mkDerivation {
  pname = "edge-components";
  inherit version;
  inherit src;
  nativeBuildInputs = [ python3 llvmPackages.clang-unwrapped lld ];
  dontConfigure = true;
  buildPhase = ''
    runHook preBuild
    python3 components/build.py --force
    runHook postBuild
  '';
  installPhase = ''
    runHook preInstall
    mkdir -p $out
    cp -r components/build $out/build
    for m in components/*/manifest.toml; do
      install -D -m 0644 "$m" "$out/$(basename "$(dirname "$m")")/manifest.toml"
    done
    runHook postInstall
  '';
  meta.description = "edge's WebAssembly components (wasm32, CPU independent)";
}
