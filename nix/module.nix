# NixOS module: services.edge. The unit's settings and hardening come from nix/service.nix, i.e.
# from edge/service/service.toml, the same description the Debian image's edge.service is
# rendered from; only ExecStart's program path differs (the Nix store path of the package).
self:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.edge;
  svc = import ./service.nix { exec = "${cfg.package}/bin/edge"; };
  toml = pkgs.formats.toml { };
  user = svc.account.user;
in
{
  options.services.edge = {
    enable = lib.mkEnableOption "the edge runtime (an ECS device on NATS JetStream)";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      defaultText = lib.literalExpression "edge.packages.\${system}.default";
      description = "The edge runtime package.";
    };
    settings = lib.mkOption {
      type = toml.type;
      default = { demo.drones = 3; };
      example = lib.literalExpression ''{ device.id = "drone-7"; state.persist_interval = 1.0; }'';
      description = ''
        The device config, rendered to ${svc.paths.config} (TOML; every section is described in
        the docs/ of the runtime). The default runs the embedded demo fleet.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."edge/device.toml".source = toml.generate "device.toml" cfg.settings;
    environment.systemPackages = [ cfg.package ];

    users.users.${user} = {
      isSystemUser = true;
      group = user;
      extraGroups = svc.account.groups;
      home = svc.paths.data_dir;
    };
    users.groups = lib.genAttrs ([ user ] ++ svc.account.groups) (_: { });

    systemd.services.edge = {
      description = svc.unit.Description;
      wantedBy = svc.install.WantedBy;
      after = svc.unit.After;
      unitConfig = builtins.removeAttrs svc.unit [ "Description" "After" ];
      serviceConfig = svc.service;
      restartTriggers = [ config.environment.etc."edge/device.toml".source ];
    };
  };
}
