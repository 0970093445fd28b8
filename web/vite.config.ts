import { defineConfig } from "vite";

// Built assets are committed into the Python package, so `pip install` needs no node.
export default defineConfig({
  base: "/",
  build: {
    outDir: "../llmlab/server/static",
    emptyOutDir: true,
    chunkSizeWarningLimit: 1000,
  },
  server: { proxy: { "/api": "http://127.0.0.1:8000", "/v1": "http://127.0.0.1:8000" } },
});
