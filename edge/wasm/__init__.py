"""WebAssembly components: binary tools, sandbox workers, host ABI."""
