// Just enough CommonJS for a browser page to use an npm package published only as CommonJS (copc.js and
// laz-perf are), without a bundler: a customer's app would bundle them; the test serves them as they are.
//
//   const require = commonjs({ aliases: { "laz-perf": "/laz-perf/index.js" }, builtins: { fs: {} } });
//   const { Copc } = await require("/copc/index.js");
//
// The whole graph is fetched first (every `require("…")` the source names), then run in order. A
// specifier without its file (`./las`, `../utils`) is asked for as written: the server answers with the
// file Node would resolve it to and names that file in Content-Location (`/copc/las/index.js`), which
// becomes the module's address, so that its own relative requires resolve against its real folder.

const REQUIRE = /\brequire\(\s*["']([^"']+)["']\s*\)/g;

export function commonjs({ aliases = {}, builtins = {} } = {}) {
  const records = new Map(); // address asked for → promise of { url, source, deps }
  const modules = new Map(); // the module's own address (Content-Location) → module

  function target(spec, base) {
    if (spec in aliases) return new URL(aliases[spec], base).href;
    if (spec.startsWith(".") || spec.startsWith("/")) return new URL(spec, base).href;
    throw new Error(`${base}: cannot resolve "${spec}" (neither relative, an alias nor a builtin)`);
  }

  function fetchGraph(address) {
    if (!records.has(address)) {
      records.set(address, (async () => {
        const response = await fetch(address);
        if (!response.ok) throw new Error(`${address}: HTTP ${response.status}`);
        const url = new URL(response.headers.get("content-location") ?? "", response.url).href;
        const record = { url, source: await response.text(), deps: new Map() };
        const specs = [...new Set([...record.source.matchAll(REQUIRE)].map((m) => m[1]))];
        await Promise.all(specs.filter((spec) => !(spec in builtins)).map(async (spec) => {
          record.deps.set(spec, await fetchGraph(target(spec, record.url)));
        }));
        return record;
      })());
    }
    return records.get(address);
  }

  function run(record) {
    if (modules.has(record.url)) return modules.get(record.url).exports;
    const module = { exports: {} };
    modules.set(record.url, module); // before running it: cycles see the partial exports, as in Node
    const require = (spec) => (spec in builtins ? builtins[spec] : run(record.deps.get(spec)));
    const dirname = record.url.slice(0, record.url.lastIndexOf("/"));
    const body = new Function("exports", "require", "module", "__filename", "__dirname",
                              `${record.source}\n//# sourceURL=${record.url}`);
    body.call(module.exports, module.exports, require, module, record.url, dirname);
    return module.exports;
  }

  return async (address) => run(await fetchGraph(new URL(address, location.href).href));
}
