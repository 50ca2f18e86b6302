# Just enough of nixpkgs' lib and pkgs to evaluate flake.nix's output names and nix/module.nix's
# unit settings with nix-instantiate alone (this test machine has Nix but no nixpkgs).
let
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  lib = {
    inherit genAttrs;
    mkEnableOption = d: { _type = "option"; description = d; };
    mkOption = o: o // { _type = "option"; };
    mkIf = cond: content: { _type = "if"; inherit cond content; };
    literalExpression = t: { _type = "literalExpression"; text = t; };
    types.package = "package";
    cleanSource = s: s;
    nixosSystem = args: { _type = "nixosSystem"; inherit args; };
  };
  pkgs = {
    stdenv.hostPlatform.system = "x86_64-linux";
    formats.toml = _: { type = "toml"; generate = name: value: "/nix/store/stub-${name}"; };
  };
  nixpkgs = { inherit lib; legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs); };
  flake = import ../../flake.nix;
  outputs = flake.outputs { self = outputs; inherit nixpkgs; nixos-hardware = { nixosModules.raspberry-pi-4 = { }; }; };
  package = "/nix/store/stub-edge-runtime";
  module = import ../../nix/module.nix outputs {
    inherit lib pkgs;
    config = {
      services.edge = { enable = true; inherit package; settings = { demo.drones = 3; }; };
      environment.etc."edge/device.toml".source = "/nix/store/stub-device.toml";
    };
  };
in
{
  inputs = builtins.attrNames flake.inputs;
  outputs = builtins.attrNames outputs;
  packages = builtins.mapAttrs (_: builtins.attrNames) outputs.packages;
  apps = builtins.mapAttrs (_: a: builtins.mapAttrs (_: app: app.type) a) outputs.apps;
  devShells = builtins.mapAttrs (_: builtins.attrNames) outputs.devShells;
  nixosModules = builtins.attrNames outputs.nixosModules;
  nixosConfigurations = builtins.attrNames outputs.nixosConfigurations;
  options = builtins.attrNames module.options.services.edge;
  moduleEnabledBy = module.config.cond;
  exec = "${package}/bin/edge";
  service = module.config.content.systemd.services.edge;
  users = module.config.content.users;
  etc = builtins.attrNames module.config.content.environment.etc;
}
