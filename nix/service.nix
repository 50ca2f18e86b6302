# The edge service as NixOS unit settings, read from the one service description
# (edge/service/service.toml) with the same rules as edge/service/unit.py: "@EXEC@" is the path of
# the edge program, a list is one directive line per item (NixOS writes list values that way).
# Pure builtins, no nixpkgs: tests/install/test_nix.py evaluates it with nix-instantiate and
# checks that it equals the Debian image's edge.service.
{ exec ? "/opt/edge/venv/bin/edge" }:
let
  desc = builtins.fromTOML (builtins.readFile ../edge/service/service.toml);
  render = v:
    if builtins.isList v then map render v
    else if builtins.isString v then builtins.replaceStrings [ "@EXEC@" ] [ exec ] v
    else v;
  section = name: builtins.mapAttrs (_: render) (desc.${name} or { });
in
{
  inherit (desc) paths account;
  unit = section "unit";
  service = section "service";
  install = section "install";
  # The order of the directives in the rendered file (attribute sets are unordered in Nix).
  sections = { Unit = section "unit"; Service = section "service"; Install = section "install"; };
}
