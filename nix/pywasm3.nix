# pywasm3 (Python bindings of the wasm3 interpreter): not in nixpkgs; published as source only.
{ lib, buildPythonPackage, fetchPypi, setuptools }:
buildPythonPackage rec {
  pname = "pywasm3";
  version = "0.5.0";
  pyproject = true;
  src = fetchPypi {
    inherit pname version;
    hash = lib.fakeHash; # pinned on the first build on a machine with nixpkgs (docs/install.md)
  };
  build-system = [ setuptools ];
  pythonImportsCheck = [ "wasm3" ];
  meta = {
    description = "Python bindings for the wasm3 WebAssembly interpreter";
    homepage = "https://github.com/wasm3/pywasm3";
    license = lib.licenses.mit;
  };
}
