# picamera2 (Raspberry Pi camera through libcamera): not in nixpkgs. Only the camera driver's
# picamera2 source imports it (drivers/camera/picam.py), so it is an optional input of the package.
{ lib, buildPythonPackage, fetchPypi, setuptools, numpy, pillow, libcamera }:
buildPythonPackage rec {
  pname = "picamera2";
  version = "0.3.25";
  pyproject = true;
  src = fetchPypi {
    inherit pname version;
    hash = "sha256-ys88QLgkDwuAICac6Wa6kRxw/ph8Sivy+5ac4010Zpo="; # the sdist on PyPI (its published SHA-256)
  };
  build-system = [ setuptools ];
  dependencies = [ numpy pillow ];
  buildInputs = [ libcamera ];
  # its optional GUI and encoder dependencies (PyQt, av, simplejpeg) are not needed by the driver
  pythonRemoveDeps = [ "av" "simplejpeg" "PiDNG" "pyopengl" "piexif" "python-prctl" "videodev2" "jsonschema" "tqdm" "openexr" ];
  dontCheckRuntimeDeps = true;
  doCheck = false;
  meta = {
    description = "The libcamera-based Python library for Raspberry Pi cameras";
    homepage = "https://github.com/raspberrypi/picamera2";
    license = lib.licenses.bsd2;
    platforms = lib.platforms.linux;
  };
}
