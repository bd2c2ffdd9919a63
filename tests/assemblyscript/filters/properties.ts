// Reads Envoy attributes (proxy_get_property) and header values during a
// request and logs them, so the host's property model is compared with
// Envoy's.  Integers (response.code, request.size) arrive as 8-byte
// little-endian values; a missing attribute logs as "<missing>".
export * from "../node_modules/@solo-io/proxy-runtime/assembly/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context, log, LogLevelValues,
} from "../node_modules/@solo-io/proxy-runtime/assembly/index";
import { WasmResultValues, set_property } from "../node_modules/@solo-io/proxy-runtime/assembly/runtime";
import * as imports from "../node_modules/@solo-io/proxy-runtime/assembly/imports";

function property(path: string): ArrayBuffer | null {
  const parts = path.split(".");
  let joined = "";
  for (let i = 0; i < parts.length; i++) {
    if (i > 0) joined += "\0";
    joined += parts[i];
  }
  const encoded = String.UTF8.encode(joined);
  const data = memory.data(8);
  const size = memory.data(8);
  const status = imports.proxy_get_property(changetype<usize>(encoded), encoded.byteLength, data, size);
  if (status != WasmResultValues.Ok) return null;
  const length = load<u32>(size);
  const result = new ArrayBuffer(length);
  memory.copy(changetype<usize>(result), load<u32>(data), length);
  return result;
}

function text(path: string): string {
  const value = property(path);
  return value == null ? "<missing>" : String.UTF8.decode(value as ArrayBuffer);
}

function integer(path: string): string {
  const value = property(path);
  if (value == null) return "<missing>";
  if ((value as ArrayBuffer).byteLength != 8) return "<" + (value as ArrayBuffer).byteLength.toString() + " bytes>";
  return load<i64>(changetype<usize>(value)).toString();
}

class PropertiesRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new PropertiesFilter(context_id, this);
  }
}

class PropertiesFilter extends Context {
  constructor(context_id: u32, root_context: PropertiesRoot) {
    super(context_id, root_context);
  }
  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const names = ["request.path", "request.url_path", "request.host", "request.method", "request.scheme",
                   "request.query", "request.protocol", "request.referer", "request.useragent", "request.id",
                   "plugin_name", "plugin_root_id", "plugin_vm_id", "no.such.attribute"];
    for (let i = 0; i < names.length; i++) {
      log(LogLevelValues.info, names[i] + "=" + text(names[i]));
    }
    log(LogLevelValues.info, "x-keep header=" + stream_context.headers.request.get("x-keep"));
    set_property("custom_note", String.UTF8.encode("noted"));
    log(LogLevelValues.info, "custom note=" + text("custom_note"));
    set_property("wasm.nested_note", String.UTF8.encode("nested"));
    log(LogLevelValues.info, "nested note=" + text("wasm.nested_note"));
    return FilterHeadersStatusValues.Continue;
  }
  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    log(LogLevelValues.info, "response.code=" + integer("response.code"));
    log(LogLevelValues.info, "request.path still=" + text("request.path"));
    log(LogLevelValues.info, "request header :path still=" + stream_context.headers.request.get(":path"));
    log(LogLevelValues.info, "custom note still=" + text("custom_note"));
    return FilterHeadersStatusValues.Continue;
  }
  onLog(): void {
    log(LogLevelValues.info, "on log: request.path=" + text("request.path") + " :path=" +
        stream_context.headers.request.get(":path") + " :status=" + stream_context.headers.response.get(":status") +
        " response.code=" + integer("response.code"));
  }
}

registerRootContext((context_id: u32) => { return new PropertiesRoot(context_id); }, "as_properties");
