// Serves a built demo site (scripts/web.sh) on 127.0.0.1 only, with the
// headers a wasm page needs. Usage: node serve.mjs SITE_DIR [PORT]
// Also imported by the end-to-end test, which takes a free port.
import { createServer } from "node:http";
import { pathToFileURL } from "node:url";
import sirv from "sirv";

/** The page's policy, sent with every response: the worker (which holds the
 *  pixels) takes its policy from its own script's headers, not the page's
 *  <meta>, and a header can also forbid forms, <base> and framing. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self' 'wasm-unsafe-eval'",
  "worker-src 'self'",
  "img-src 'self' data: blob:",
  "style-src 'self'",
  "connect-src 'self'",
  "form-action 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join("; ");

/** Starts serving `dir`; resolves to the server once it listens. */
export function serve(dir, port = 0) {
  const files = sirv(dir, { dev: true, etag: false });
  const server = createServer((req, res) => {
    res.setHeader("X-Content-Type-Options", "nosniff");
    res.setHeader("Cache-Control", "no-store");
    res.setHeader("Content-Security-Policy", CONTENT_SECURITY_POLICY);
    files(req, res, () => {
      res.statusCode = 404;
      res.end("not found");
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [dir, port = "8080"] = process.argv.slice(2);
  if (!dir) {
    console.error("usage: node serve.mjs SITE_DIR [PORT]");
    process.exit(2);
  }
  const server = await serve(dir, Number(port));
  const { port: bound } = server.address();
  console.error(`serving ${dir} on http://127.0.0.1:${bound}/`);
  process.on("SIGTERM", () => server.close(() => process.exit(0)));
}
