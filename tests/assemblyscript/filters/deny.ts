// Policy filter written with the AssemblyScript SDK: requests carrying
// x-deny get a local 403 reply (body and an extra header; the request's
// x-deny-type as the reply's content-type, and no body with x-deny-empty);
// every denial is counted, and the gauge as_deny_last_status records the last
// reply code.
export * from "../node_modules/@solo-io/proxy-runtime/assembly/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  log, LogLevelValues, Counter, Gauge, send_local_response, GrpcStatusValues, Headers, HeaderPair,
} from "../node_modules/@solo-io/proxy-runtime/assembly/index";

let denied: Counter | null = null;
let lastStatus: Gauge | null = null;

class DenyRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new DenyFilter(context_id, this);
  }
  onConfigure(configuration_size: u32): bool {
    const ok = super.onConfigure(configuration_size);
    denied = new Counter("as_deny_denied_total");
    lastStatus = new Gauge("as_deny_last_status");
    return ok;
  }
}

class DenyFilter extends Context {
  constructor(context_id: u32, root_context: DenyRoot) {
    super(context_id, root_context);
  }
  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (stream_context.headers.request.get("x-deny") == "") {
      return FilterHeadersStatusValues.Continue;
    }
    log(LogLevelValues.warn, "denying " + stream_context.headers.request.get(":path"));
    const headers: Headers = [];
    headers.push(new HeaderPair(String.UTF8.encode("x-denied-by"), String.UTF8.encode("as-deny")));
    const content_type = stream_context.headers.request.get("x-deny-type");
    if (content_type != "") {
      headers.push(new HeaderPair(String.UTF8.encode("content-type"), String.UTF8.encode(content_type)));
    }
    const body = stream_context.headers.request.get("x-deny-empty") == "" ? "access denied\n" : "";
    send_local_response(403, "denied by policy", String.UTF8.encode(body), headers, GrpcStatusValues.Unknown);
    (denied as Counter).increment(1);
    return FilterHeadersStatusValues.StopIteration;
  }
  onResponseHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const status = stream_context.headers.response.get(":status");
    log(LogLevelValues.info, "response " + status + " headers=" + count.toString());
    const gauge = lastStatus as Gauge;
    gauge.record(gauge.metric_id, U64.parseInt(status));
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new DenyRoot(context_id); }, "as_deny");
