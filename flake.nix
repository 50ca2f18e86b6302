{
  description = "edge: a lean ECS runtime for single-board computers (docs/install.md)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
    nixos-hardware.url = "github:NixOS/nixos-hardware";
  };

  outputs = { self, nixpkgs, nixos-hardware }:
    let
      systems = [ "aarch64-linux" "x86_64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      # the one place of the version: edge/__init__.py
      version = builtins.elemAt (builtins.match ''(.|
)*__version__ = "([^"]+)"(.|
)*'' (builtins.readFile ./edge/__init__.py)) 1;
      src = nixpkgs.lib.cleanSource ./.;
      edgeFor = pkgs:
        let
          py = pkgs.python3Packages;
          pywasm3 = py.callPackage ./nix/pywasm3.nix { };
          picamera2 = py.callPackage ./nix/picamera2.nix { };
          ziglang = pkgs.callPackage ./nix/zig.nix { };
          components = pkgs.callPackage ./nix/components.nix { inherit src version ziglang; };
        in
        {
          inherit pywasm3 picamera2 components;
          edge = pkgs.callPackage ./nix/package.nix {
            inherit components pywasm3 picamera2 src version;
            python3Packages = py.overrideScope (_: _: { inherit pywasm3; });
          };
        };
    in
    {
      packages = forAll (pkgs:
        let e = edgeFor pkgs; in {
          default = e.edge;
          edge = e.edge;
          components = e.components;
          pywasm3 = e.pywasm3;
        });

      # `nix run` starts the embedded demo (edge run without a config).
      apps = forAll (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/edge";
        };
      });

      nixosModules.default = import ./nix/module.nix self;
      nixosModules.edge = self.nixosModules.default;

      nixosConfigurations.edge-pi4 = nixpkgs.lib.nixosSystem {
        system = "aarch64-linux";
        modules = [
          self.nixosModules.default
          nixos-hardware.nixosModules.raspberry-pi-4
          ./nix/sd-image-pi4.nix
        ];
      };

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [ pkgs.nats-server pkgs.llvmPackages.clang-unwrapped pkgs.lld pkgs.gnumake
                       pkgs.python3Packages.pytest pkgs.python3Packages.pytest-asyncio pkgs.mypy pkgs.ruff ];
        };
      });
    };
}
