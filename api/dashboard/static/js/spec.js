// Specs as dotted paths, and the paths in which several specs differ.

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** {"a": {"b": 1}, "c": [1, 2]} -> Map {"a.b" => 1, "c" => [1, 2]} (lists are leaves). */
export function flatten(value, prefix = "", out = new Map()) {
  if (isObject(value)) {
    const keys = Object.keys(value).sort();
    if (keys.length === 0 && prefix) out.set(prefix, {});
    for (const key of keys) flatten(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else if (prefix) {
    out.set(prefix, value);
  }
  return out;
}

/** A leaf as text: JSON, with "absent" for a path a spec does not have. */
export function leafText(value) {
  return value === undefined ? "(absent)" : JSON.stringify(value);
}

/** [{path, values: [v per spec]}] for the paths whose values are not all the same, sorted by path. */
export function specDiff(specs) {
  const flat = specs.map((spec) => flatten(spec || {}));
  const paths = new Set();
  for (const f of flat) for (const path of f.keys()) paths.add(path);
  const rows = [];
  for (const path of [...paths].sort()) {
    const values = flat.map((f) => (f.has(path) ? f.get(path) : undefined));
    const texts = new Set(values.map(leafText));
    if (texts.size > 1) rows.push({path, values});
  }
  return rows;
}
