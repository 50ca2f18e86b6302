# Zig for the Zig components: components/build.py needs the exact version the Zig SDK is written
# for (ZIG_VERSION, 0.17.0), newer than nixpkgs' zig, so this is the static zig binary and its lib
# directory from PyPI's ziglang wheel of that version (the one `pip install -e '.[sdk]'` installs),
# pinned by the wheel's SHA-256 as PyPI publishes it.
{ lib, stdenvNoCC, fetchurl, unzip }:
let
  version = "0.17.0";
  wheels = {
    x86_64-linux = {
      url = "https://files.pythonhosted.org/packages/fe/6f/e1c380fe61db36cb464d5d4d18c557338812500986885373e2550d4ebf6b/ziglang-0.17.0-py3-none-manylinux_2_12_x86_64.manylinux2010_x86_64.musllinux_1_1_x86_64.whl";
      hash = "sha256-lweYJwZKdJLM5VQc60OK6AA84eVOOZZ22i1i+3pdwIs=";
    };
    aarch64-linux = {
      url = "https://files.pythonhosted.org/packages/02/21/abee2f0524f54fe3e8783748b9df79bb07d4b955e6b465677d1cfbda335c/ziglang-0.17.0-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl";
      hash = "sha256-0oBPlPVPf8+BafSyEqYZrWiKTi5lkul28M8uWOLNivM=";
    };
  };
  system = stdenvNoCC.hostPlatform.system;
  wheel = wheels.${system} or (throw "nix/zig.nix: no ziglang ${version} wheel for ${system}");
in
stdenvNoCC.mkDerivation {
  pname = "ziglang-wheel";
  inherit version;
  src = fetchurl { inherit (wheel) url hash; };
  nativeBuildInputs = [ unzip ];
  unpackPhase = ''
    runHook preUnpack
    unzip -q "$src" 'ziglang/*'
    runHook postUnpack
  '';
  dontConfigure = true;
  dontBuild = true;
  # a static binary: nothing to patch; stripping it would only risk it
  dontStrip = true;
  dontPatchELF = true;
  installPhase = ''
    runHook preInstall
    mkdir -p $out/lib $out/bin
    cp -r ziglang $out/lib/zig
    ln -s $out/lib/zig/zig $out/bin/zig
    runHook postInstall
  '';
  meta = {
    description = "Zig ${version} (the static build of PyPI's ziglang wheel)";
    homepage = "https://ziglang.org";
    license = lib.licenses.mit;
    platforms = builtins.attrNames wheels;
  };
}
