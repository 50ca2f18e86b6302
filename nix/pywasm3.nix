# pywasm3 (Python bindings of the wasm3 interpreter): not in nixpkgs; published as source only.
{ lib, buildPythonPackage, fetchPypi, setuptools }:
buildPythonPackage rec {
  pname = "pywasm3";
  version = "0.5.0";
  pyproject = true;
  src = fetchPypi {
    inherit pname version;
    hash = "sha256-WkfIo59/aucbMxay5dhsnQ2253GmXwmobk1Ko6Ga78w="; # the sdist on PyPI (its published SHA-256)
  };
  build-system = [ setuptools ];
  pythonImportsCheck = [ "wasm3" ];
  meta = {
    description = "Python bindings for the wasm3 WebAssembly interpreter";
    homepage = "https://github.com/wasm3/pywasm3";
    license = lib.licenses.mit;
  };
}
