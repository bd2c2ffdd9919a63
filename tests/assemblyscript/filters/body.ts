// Body filter written with the AssemblyScript SDK.  It buffers the request
// body (returning StopIterationAndBuffer until end of stream), then appends
// the plugin configuration to it; the response body is replaced by its length.
// The SDK has no binding for proxy_set_buffer_bytes, so it is declared here.
export * from "../node_modules/@solo-io/proxy-runtime/assembly/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, FilterDataStatusValues,
  stream_context, log, LogLevelValues,
} from "../node_modules/@solo-io/proxy-runtime/assembly/index";
import { get_buffer_bytes, BufferTypeValues } from "../node_modules/@solo-io/proxy-runtime/assembly/runtime";

@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(typ: u32, start: u32, length: u32, data: usize, size: usize): u32;

function setBody(typ: u32, text: string): u32 {
  const data = String.UTF8.encode(text);
  return proxy_set_buffer_bytes(typ, 0, 0xffffffff, changetype<usize>(data), data.byteLength);
}

class BodyRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new BodyFilter(context_id, this);
  }
}

class BodyFilter extends Context {
  root: BodyRoot;
  constructor(context_id: u32, root_context: BodyRoot) {
    super(context_id, root_context);
    this.root = root_context;
  }
  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.request.remove("content-length");
    return FilterHeadersStatusValues.Continue;
  }
  onRequestBody(size: usize, end_of_stream: bool): FilterDataStatusValues {
    log(LogLevelValues.info, "request body " + size.toString() + " end=" + (end_of_stream ? "1" : "0"));
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    const body = String.UTF8.decode(get_buffer_bytes(BufferTypeValues.HttpRequestBody, 0, size as u32));
    const status = setBody(BufferTypeValues.HttpRequestBody, body + "+" + this.root.getConfiguration());
    log(LogLevelValues.info, "request body was '" + body + "' set status " + status.toString());
    return FilterDataStatusValues.Continue;
  }
  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.remove("content-length");
    return FilterHeadersStatusValues.Continue;
  }
  onResponseBody(size: usize, end_of_stream: bool): FilterDataStatusValues {
    log(LogLevelValues.info, "response body " + size.toString() + " end=" + (end_of_stream ? "1" : "0"));
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    setBody(BufferTypeValues.HttpResponseBody, "length=" + size.toString());
    return FilterDataStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new BodyRoot(context_id); }, "as_body");
