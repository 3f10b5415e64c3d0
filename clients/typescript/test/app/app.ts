// A tiny app of the package, as an archive app writes it: compiled by the tests with strict tsc in
// a CommonJS project (module node16, require()) and in an ES module project, against the packed
// tarball installed from npm. It type-checks the public types and calls health() on the test stack.
import {
  ArchivetagError,
  ErrorReason,
  importFolder,
  TaggingClient,
  type ImportEvent,
  type StackStatus,
  type TagResult,
  type ViewType,
  type ViewTypeName,
} from "@archivetag/client";

const known: ViewTypeName = "interior";
const later: ViewTypeName = "stairwell"; // a class a later model may add
export const names: ViewTypeName[] = [known, later];

export function viewName(viewType: ViewType): ViewTypeName {
  return viewType.name;
}

export function limit(error: ArchivetagError): number | undefined {
  if (error.is(ErrorReason.IMAGE_TOO_LARGE)) return Number(error.metadata.limit_bytes); // typed key
  if (error.is(ErrorReason.NO_TAGGER_AVAILABLE)) return Object.keys(error.metadata).length;
  return undefined;
}

export function when(result: TagResult): number {
  return result.taggedAt.getTime(); // a Date
}

export function cacheHits(status: StackStatus): number {
  return status.cache.hits + (status.backends[0]?.lastErrorTime?.getTime() ?? 0);
}

export function describe(event: ImportEvent): string {
  switch (event.type) {
    case "tagged":
      return `${event.path}: ${event.result.tags.map((t) => t.name).join(", ")}`;
    case "rejected":
    case "deferred":
      return `${event.path}: ${event.error.reason}`;
    default:
      return `${event.type} ${event.progress.done}/${event.progress.total}`;
  }
}

async function main(): Promise<void> {
  const client = new TaggingClient({ target: process.argv[2]!, http2: { peerMaxConcurrentStreams: 100 } });
  const health = await client.health();
  await client[Symbol.asyncDispose]();
  void importFolder;
  console.log(JSON.stringify({ health, format: typeof require === "function" ? "commonjs" : "module" }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
