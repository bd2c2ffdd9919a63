// Authorisation filter written with the AssemblyScript SDK: each request is
// paused while an HTTP callout asks cluster "upstream" at /auth; the callout's
// status goes into x-auth-status and the request continues, unless the
// callout failed (local 503 reply).
export * from "../node_modules/@solo-io/proxy-runtime/assembly/proxy";
import {
  RootContext, Context, BaseContext, registerRootContext, FilterHeadersStatusValues, stream_context,
  log, LogLevelValues, Headers, HeaderPair, send_local_response, GrpcStatusValues, continue_request,
} from "../node_modules/@solo-io/proxy-runtime/assembly/index";

class CalloutRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new CalloutFilter(context_id, this);
  }
}

class CalloutFilter extends Context {
  root: CalloutRoot;
  constructor(context_id: u32, root_context: CalloutRoot) {
    super(context_id, root_context);
    this.root = root_context;
  }
  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const headers: Headers = [];
    headers.push(new HeaderPair(String.UTF8.encode(":method"), String.UTF8.encode("GET")));
    headers.push(new HeaderPair(String.UTF8.encode(":path"), String.UTF8.encode("/auth?for=" + stream_context.headers.request.get(":path"))));
    headers.push(new HeaderPair(String.UTF8.encode(":authority"), String.UTF8.encode("auth.local")));
    headers.push(new HeaderPair(String.UTF8.encode("x-plugin-config"), String.UTF8.encode(this.root.getConfiguration())));
    const result = this.root.httpCall("upstream", headers, new ArrayBuffer(0), [], 5000, this,
      (origin: Context, header_count: u32, body_size: usize, trailer_count: u32): void => {
        if (header_count == 0) {
          send_local_response(503, "auth callout failed", String.UTF8.encode("auth unavailable\n"), [], GrpcStatusValues.Unknown);
          return;
        }
        const status = stream_context.headers.http_callback.get(":status");
        log(LogLevelValues.info, "auth said " + status + " body_size=" + body_size.toString() + " upstream-time=" + (stream_context.headers.http_callback.get("x-envoy-upstream-service-time") != "" ? "present" : "absent"));
        origin.setEffectiveContext();
        stream_context.headers.request.add("x-auth-status", status);
        continue_request();
      });
    log(LogLevelValues.info, "callout result " + result.toString());
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => { return new CalloutRoot(context_id); }, "as_callout");
