// Opens a point cloud job's outputs in the browser clients our customers' web app would use, in headless
// Chromium, and saves a screenshot of each: the COPC file in copc.js (laz-perf's WebAssembly decoder)
// drawn by three.js (copc.html), and the 3D Tiles tileset in CesiumJS (cesium.html).
//
//   node open.mjs '{"copc": "/path/cloud.copc.laz" | null, "tileset": "/path/tiles" | null,
//                   "out": "/dir", "size": 480, "name": "job-1", "timeout_s": 90}'
//
// `tileset` is the folder holding tileset.json (and the tiles it names, by relative URI). Prints one
// JSON line: [{viewer, input, ok, error, ...the page's report, console_errors, refused, screenshot}].
//
// Everything a page asks for is served from node_modules and the given files through request routing
// (no port is opened; the origin is http://viewer.invalid); any other request (a CDN, Cesium ion, the
// network) is refused, and so is a missing file (404) or a byte range past the end of the COPC (416):
// each is listed in `refused`, so a page that needs one fails the check. The COPC is served with HTTP
// range requests (206 + Content-Range), as from object storage.

import { open, stat } from "node:fs/promises";
import { basename, extname, join, normalize } from "node:path";
import { chromium } from "../../../daemon/js/node_modules/playwright-core/index.mjs";

const HERE = new URL(".", import.meta.url).pathname;
const MODULES = normalize(join(HERE, "../../../daemon/js/node_modules"));
const ORIGIN = "http://viewer.invalid";
const TYPES = {
  ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
  ".json": "application/json", ".wasm": "application/wasm", ".png": "image/png", ".svg": "image/svg+xml",
  ".jpg": "image/jpeg",
};
const PAGES = { copc: "copc.html", cesium: "cesium.html" };
const ROOTS = {
  "/three/": join(MODULES, "three"),
  "/cesium/": join(MODULES, "cesium/Build/Cesium"),
  "/copc/": join(MODULES, "copc/lib"), // CommonJS, resolved as Node would (see commonjs.js)
  "/laz-perf/": join(MODULES, "laz-perf/lib/web"),
};
const COMMONJS = ["/copc/", "/laz-perf/"];
// A CommonJS specifier without its file (`./las`) is answered with the file Node would resolve it to
// (`las/index.js`) and that file's path in Content-Location, against which the page's loader resolves
// the module's own relative requires. (Not a redirect: Chromium follows a redirect that a route
// fulfils without routing the redirected request, so it would go to the network.)

async function isFile(path) {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

// { file } a path names (for a CommonJS specifier, the file it resolves to, and { location }, that
// file's path when it is not the one asked for), or null: refused
async function resolve(pathname, inputs) {
  if (pathname === "/cloud.copc.laz") return inputs.copc ? { file: inputs.copc, ranges: true } : null;
  if (pathname === "/commonjs.js" || Object.values(PAGES).includes(pathname.slice(1))) {
    return { file: join(HERE, pathname) };
  }
  const roots = { ...ROOTS, ...(inputs.tileset ? { "/tiles/": normalize(inputs.tileset) } : {}) };
  for (const [prefix, root] of Object.entries(roots)) {
    if (!pathname.startsWith(prefix)) continue;
    const file = normalize(join(root, decodeURIComponent(pathname.slice(prefix.length))));
    if (!file.startsWith(root)) return null;
    if (COMMONJS.includes(prefix) && !(await isFile(file))) {
      if (await isFile(`${file}.js`)) return { file: `${file}.js`, location: `${pathname}.js` };
      const index = `${pathname.replace(/\/$/, "")}/index.js`;
      if (await isFile(join(file, "index.js"))) return { file: join(file, "index.js"), location: index };
    }
    return { file };
  }
  return null;
}

// One range of `bytes=a-b`, `bytes=a-` or `bytes=-n`, clamped to the file; null if unsatisfiable
function byteRange(header, size) {
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === "" && match[2] === "")) return null;
  let [start, end] = match[1] === "" ? [size - Number(match[2]), size - 1] : [Number(match[1]), match[2] === "" ? size - 1 : Number(match[2])];
  start = Math.max(start, 0);
  end = Math.min(end, size - 1);
  return start <= end && start < size ? [start, end] : null;
}

async function readBytes(file, start, end) {
  const handle = await open(file, "r");
  try {
    const buffer = Buffer.alloc(end - start + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

async function serve(route, inputs, refused) {
  const request = route.request();
  const url = new URL(request.url());
  const found = url.origin === ORIGIN ? await resolve(url.pathname, inputs) : null;
  if (found === null) {
    refused.push(request.url());
    return route.abort("blockedbyclient");
  }
  const contentType = TYPES[extname(found.file)] ?? "application/octet-stream";
  let size;
  try {
    size = (await stat(found.file)).size;
  } catch {
    refused.push(`${request.url()} (404)`);
    return route.fulfill({ status: 404, body: "not found" });
  }
  const rangeHeader = found.ranges ? (await request.allHeaders()).range : undefined;
  if (rangeHeader === undefined) {
    const body = await readBytes(found.file, 0, size - 1);
    const headers = found.ranges ? { "accept-ranges": "bytes" } : {};
    if (found.location) headers["content-location"] = found.location;
    return route.fulfill({ status: 200, body, contentType, headers });
  }
  const range = byteRange(rangeHeader, size);
  if (range === null) {
    refused.push(`${request.url()} (416: ${rangeHeader} of ${size} bytes)`);
    return route.fulfill({ status: 416, headers: { "content-range": `bytes */${size}` }, body: "" });
  }
  const body = await readBytes(found.file, ...range);
  return route.fulfill({
    status: 206, body, contentType,
    headers: { "accept-ranges": "bytes", "content-range": `bytes ${range[0]}-${range[1]}/${size}` },
  });
}

async function openOne(browser, viewer, inputs, { out, size, name, timeout_s }) {
  const page = await browser.newPage({ viewport: { width: size, height: size } });
  const consoleErrors = [];
  const refused = [];
  page.on("console", (message) => message.type() === "error" && consoleErrors.push(message.text()));
  page.on("pageerror", (error) => consoleErrors.push(error.message));
  await page.route("**/*", (route) => serve(route, inputs, refused));
  const input = viewer === "copc" ? inputs.copc : join(inputs.tileset, "tileset.json");
  const screenshot = join(out, `${name}-${viewer}.png`);
  try {
    await page.goto(`${ORIGIN}/${PAGES[viewer]}`);
    await page.waitForFunction(() => window.opened !== undefined, null, { timeout: timeout_s * 1000 });
    const result = await page.evaluate(() => window.opened);
    await page.screenshot({ path: screenshot });
    return { viewer, input, ...result, console_errors: consoleErrors, refused, screenshot };
  } catch (error) {
    return { viewer, input, ok: false, error: String(error), console_errors: consoleErrors, refused };
  } finally {
    await page.close();
  }
}

const args = JSON.parse(process.argv[2]);
const { copc = null, tileset = null, out, size = 480, timeout_s = 90 } = args;
const name = args.name ?? basename(copc ?? tileset ?? "pointcloud", ".copc.laz");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
});
try {
  const results = [];
  const options = { out, size, name, timeout_s };
  if (copc) results.push(await openOne(browser, "copc", { copc }, options));
  if (tileset) results.push(await openOne(browser, "cesium", { tileset }, options));
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
}
