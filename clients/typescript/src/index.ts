// @archivetag/client: the archive apps' way in to the archivetag orchestrator.
export * from "./client.js";
export * from "./errors.js";
export * from "./import.js";
export { ErrorReason } from "./gen/archivetag/v1/errors_pb.js";
export { BackendHealth, BreakerState, FallbackReason, OverflowPolicy } from "./gen/archivetag/v1/tagging_pb.js";
export type { StageTimings } from "./gen/archivetag/v1/tagging_pb.js";
export { OcrMode, OcrStatus } from "./gen/archivetag/v1/common_pb.js";
export type { ImageContext, ModelIdentity, OcrRegion, OcrResult, Tag } from "./gen/archivetag/v1/common_pb.js";
export type { ClassScore, LabelScore } from "./gen/archivetag/v1/view_type_pb.js";
export { Code } from "@connectrpc/connect";
/** The generated code for the whole contract (messages, enums, service descriptors). */
export * as v1 from "./gen/archivetag/v1/tagging_pb.js";
