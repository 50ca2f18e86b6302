# The WebAssembly components (components/build.py): C with clang for wasm32 and lld, Rust with
# nixpkgs' rustc (built with the wasm32-unknown-unknown standard library), Zig with nix/zig.nix
# (the version the Zig SDK is written for). Every input is pinned: the source by the flake, the
# compilers by the nixpkgs input, Zig by its wheel's hash. The modules do not depend on the CPU,
# so this derivation's output is the same on every system.
{ lib, stdenvNoCC, python3, llvmPackages, lld, rustc, ziglang, src, version }:
stdenvNoCC.mkDerivation {
  pname = "edge-components";
  inherit version;
  inherit src;
  nativeBuildInputs = [ python3 llvmPackages.clang-unwrapped lld rustc ziglang ];
  dontConfigure = true;
  buildPhase = ''
    runHook preBuild
    export HOME=$TMPDIR
    EDGE_RUSTC=${rustc}/bin/rustc EDGE_ZIG=${ziglang}/bin/zig python3 components/build.py --force
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
