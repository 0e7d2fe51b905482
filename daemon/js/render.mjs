// A model drawn by three.js in headless Chromium (thumbnail.html), saved as PNG and WebP.
//
// The page and everything it loads are served from this folder through Playwright's request routing:
// no port is opened, and any other request is refused, so a model cannot make the browser fetch
// anything. Chromium draws WebGL with SwiftShader on a CPU host and, with a GPU, through ANGLE.

import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { chromium } from "playwright-core";
import sharp from "sharp";

const HERE = new URL(".", import.meta.url).pathname;
const ORIGIN = "http://thumbnail.invalid";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".glb": "model/gltf-binary" };

export async function renderThumbnail({ path, png, webp, size = 512, timeout_s = 120, chromium: executable = null }) {
  const browser = await chromium.launch({
    executablePath: executable || "/usr/bin/chromium",
    args: ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: size, height: size } });
    const problems = [];
    page.on("pageerror", (error) => problems.push(error.message));
    await page.route("**/*", (route) => serve(route, path));
    await page.goto(`${ORIGIN}/thumbnail.html?size=${size}`);
    await page.waitForFunction(() => window.thumbnail !== undefined, null, { timeout: timeout_s * 1000 });
    const outcome = await page.evaluate(() => window.thumbnail);
    if (!outcome.ok) return { ok: false, error: outcome.error, page_errors: problems };
    await page.locator("canvas").screenshot({ path: png });
    await sharp(png).webp({ quality: 85 }).toFile(webp);
    return { ...outcome, page_errors: problems, size };
  } finally {
    await browser.close();
  }
}

async function serve(route, modelPath) {
  const url = new URL(route.request().url());
  if (url.origin !== ORIGIN) return route.abort("blockedbyclient");
  let file;
  if (url.pathname === "/thumbnail.html") file = join(HERE, "thumbnail.html");
  else if (url.pathname === "/model.glb") file = modelPath;
  else if (url.pathname.startsWith("/three/")) {
    file = normalize(join(HERE, "node_modules", url.pathname));
    if (!file.startsWith(join(HERE, "node_modules", "three"))) return route.abort("blockedbyclient");
  } else return route.fulfill({ status: 404, body: "not found" });
  try {
    const body = await readFile(file);
    return route.fulfill({ status: 200, body, contentType: TYPES[extname(file)] ?? "application/octet-stream" });
  } catch {
    return route.fulfill({ status: 404, body: "not found" });
  }
}
