// Opens GLB files in the browser clients our customers' web app uses (three.js's GLTFLoader and
// <model-viewer>) in headless Chromium, and saves a screenshot of each.
//
//   node open.mjs '{"models": ["/path/a.glb"], "viewers": ["three", "model-viewer"], "out": "/dir", "size": 320}'
//
// Prints one JSON line: [{model, viewer, ok, error, triangles, console_errors, refused, screenshot}].
// Everything a page asks for is served from node_modules through request routing; any other request
// (a CDN, the network) is refused and reported, so a page that needs one fails the check.

import { readFile } from "node:fs/promises";
import { basename, extname, join, normalize } from "node:path";
import { chromium } from "../../../daemon/js/node_modules/playwright-core/index.mjs";

const HERE = new URL(".", import.meta.url).pathname;
const MODULES = normalize(join(HERE, "../../../daemon/js/node_modules"));
const ORIGIN = "http://viewer.invalid";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".cjs": "text/javascript",
                ".wasm": "application/wasm", ".glb": "model/gltf-binary" };
const ROOTS = {
  "/three/": join(MODULES, "three"),
  "/model-viewer/": join(MODULES, "@google/model-viewer/dist"),
};

function fileFor(pathname, model) {
  if (pathname === "/model.glb") return model;
  if (pathname === "/three.html" || pathname === "/model-viewer.html") return join(HERE, pathname);
  if (pathname === "/meshopt/meshopt_decoder.js") return join(MODULES, "meshoptimizer/meshopt_decoder.cjs");
  for (const [prefix, root] of Object.entries(ROOTS)) {
    if (!pathname.startsWith(prefix)) continue;
    const file = normalize(join(root, pathname.slice(prefix.length)));
    return file.startsWith(root) ? file : null;
  }
  return null;
}

async function openOne(browser, model, viewer, out, size) {
  const page = await browser.newPage({ viewport: { width: size, height: size } });
  const consoleErrors = [];
  const refused = [];
  page.on("console", (message) => message.type() === "error" && consoleErrors.push(message.text()));
  page.on("pageerror", (error) => consoleErrors.push(error.message));
  await page.route("**/*", async (route) => {
    const url = new URL(route.request().url());
    const file = url.origin === ORIGIN ? fileFor(url.pathname, model) : null;
    if (file === null) {
      refused.push(route.request().url());
      return route.abort("blockedbyclient");
    }
    try {
      const body = await readFile(file);
      return route.fulfill({ status: 200, body, contentType: TYPES[extname(file)] ?? "application/octet-stream" });
    } catch {
      refused.push(route.request().url());
      return route.fulfill({ status: 404, body: "not found" });
    }
  });
  const screenshot = join(out, `${basename(model, ".glb")}-${viewer}.png`);
  try {
    await page.goto(`${ORIGIN}/${viewer}.html`);
    await page.waitForFunction(() => window.opened !== undefined, null, { timeout: 120_000 });
    const result = await page.evaluate(() => window.opened);
    await page.screenshot({ path: screenshot });
    return { model, viewer, ...result, console_errors: consoleErrors, refused, screenshot };
  } catch (error) {
    return { model, viewer, ok: false, error: String(error), console_errors: consoleErrors, refused };
  } finally {
    await page.close();
  }
}

const { models, viewers, out, size = 320 } = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
});
try {
  const results = [];
  for (const model of models) for (const viewer of viewers) results.push(await openOne(browser, model, viewer, out, size));
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
