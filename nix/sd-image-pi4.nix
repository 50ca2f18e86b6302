# A NixOS SD image for the Raspberry Pi 4 running services.edge (nixpkgs' sd-image-aarch64 and
# nixos-hardware's raspberry-pi-4). Build: nix build .#nixosConfigurations.edge-pi4.config.system.build.sdImage
{ lib, modulesPath, ... }:
{
  imports = [ "${modulesPath}/installer/sd-card/sd-image-aarch64.nix" ];
  services.edge.enable = true;
  services.edge.settings = { demo.drones = 3; };
  networking.hostName = lib.mkDefault "edge";
  networking.useNetworkd = true;
  services.openssh = {
    enable = true;
    settings = { PasswordAuthentication = false; KbdInteractiveAuthentication = false; PermitRootLogin = "prohibit-password"; };
  };
  # No default password: add keys with users.users.root.openssh.authorizedKeys.keys in your own
  # configuration (docs/install.md, "NixOS").
  users.mutableUsers = false;
  hardware.i2c.enable = true;
  sdImage.compressImage = true;
  system.stateVersion = "24.11";
}
