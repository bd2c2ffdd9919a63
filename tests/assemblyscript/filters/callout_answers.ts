// Logs exactly what an HTTP callout's answer looks like to the filter: each
// request is paused on a GET to the cluster named by its x-callout-cluster
// header (default "upstream"), with the timeout in x-callout-timeout (ms,
// default 5000); with x-callout-body it is a POST carrying that body.  The callback logs the answer's header count, every header
// (the router's timing header only as present), the body and the trailer
// count, then adds x-answer-status to the request and continues it.  A call
// Envoy refuses to start is logged with its result; the request continues.
export * from "../node_modules/@solo-io/proxy-runtime/assembly/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues, stream_context,
  log, LogLevelValues, Headers, HeaderPair, continue_request, WasmResultValues,
} from "../node_modules/@solo-io/proxy-runtime/assembly/index";
import { get_buffer_bytes, BufferTypeValues } from "../node_modules/@solo-io/proxy-runtime/assembly/runtime";

class AnswersRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new AnswersFilter(context_id, this);
  }
}

class AnswersFilter extends Context {
  root: AnswersRoot;
  constructor(context_id: u32, root_context: AnswersRoot) {
    super(context_id, root_context);
    this.root = root_context;
  }
  onRequestHeaders(count: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let cluster = stream_context.headers.request.get("x-callout-cluster");
    if (cluster == "") {
      cluster = "upstream";
    }
    const timeout_text = stream_context.headers.request.get("x-callout-timeout");
    const timeout: u32 = timeout_text == "" ? 5000 : U32.parseInt(timeout_text);
    const body = stream_context.headers.request.get("x-callout-body");
    const headers: Headers = [];
    headers.push(new HeaderPair(String.UTF8.encode(":method"), String.UTF8.encode(body == "" ? "GET" : "POST")));
    headers.push(new HeaderPair(String.UTF8.encode(":path"), String.UTF8.encode("/answer")));
    headers.push(new HeaderPair(String.UTF8.encode(":authority"), String.UTF8.encode("answers.local")));
    headers.push(new HeaderPair(String.UTF8.encode("x-asked-for"), String.UTF8.encode(stream_context.headers.request.get(":path"))));
    const result = this.root.httpCall(cluster, headers, String.UTF8.encode(body), [], timeout, this,
      (origin: Context, header_count: u32, body_size: usize, trailer_count: u32): void => {
        log(LogLevelValues.info, "answer headers=" + header_count.toString() + " body_size=" + body_size.toString()
          + " trailers=" + trailer_count.toString());
        const answer = stream_context.headers.http_callback.get_headers();
        for (let i = 0; i < answer.length; i++) {
          const name = String.UTF8.decode(answer[i].key);
          const value = name == "x-envoy-upstream-service-time" ? "present" : String.UTF8.decode(answer[i].value);
          log(LogLevelValues.info, "answer header " + name + ": " + value);
        }
        if (body_size > 0) {
          log(LogLevelValues.info, "answer body: "
            + String.UTF8.decode(get_buffer_bytes(BufferTypeValues.HttpCallResponseBody, 0, body_size as u32)));
        }
        origin.setEffectiveContext();
        const status = stream_context.headers.http_callback.get(":status");
        stream_context.headers.request.add("x-answer-status", status == "" ? "none" : status);
        continue_request();
      });
    log(LogLevelValues.info, "callout to " + cluster + " result " + result.toString());
    return result == WasmResultValues.Ok ? FilterHeadersStatusValues.StopIteration : FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32) => { return new AnswersRoot(context_id); }, "as_callout_answers");
