// Header filter written with the third-party AssemblyScript Proxy-Wasm SDK.
// Request: add x-as-config (the plugin configuration), replace x-replace-me,
// remove x-remove-me; response: add x-as-response.  Counts requests in a
// counter and logs the request path.
export * from "../node_modules/@solo-io/proxy-runtime/assembly/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  log, LogLevelValues, Counter,
} from "../node_modules/@solo-io/proxy-runtime/assembly/index";

let requests: Counter | null = null;

class HeadersRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new HeadersFilter(context_id, this);
  }
  onConfigure(configuration_size: u32): bool {
    const ok = super.onConfigure(configuration_size);
    requests = new Counter("as_headers_requests_total");
    log(LogLevelValues.info, "configured with " + this.getConfiguration());
    return ok;
  }
}

class HeadersFilter extends Context {
  root: HeadersRoot;
  constructor(context_id: u32, root_context: HeadersRoot) {
    super(context_id, root_context);
    this.root = root_context;
  }
  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const request = stream_context.headers.request;
    log(LogLevelValues.info, "request path=" + request.get(":path") + " headers=" + count.toString());
    request.add("x-as-config", this.root.getConfiguration());
    if (request.get("x-replace-me") != "") {
      request.replace("x-replace-me", "replaced");
    }
    request.remove("x-remove-me");
    (requests as Counter).increment(1);
    return FilterHeadersStatusValues.Continue;
  }
  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-response", "status-" + stream_context.headers.response.get(":status"));
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new HeadersRoot(context_id); }, "as_headers");
