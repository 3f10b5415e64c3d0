// Leaves a tagMany loop (or an importFolder loop) after the first answer and closes the client: the process
// must then end by itself, with no socket left open. Usage: node leave.mjs tagMany|importFolder TARGET TOKEN PHOTO|FOLDER
import { readFileSync } from "node:fs";
import { importFolder, TaggingClient } from "../../dist/esm/index.js";

const [how, target, token, path] = process.argv.slice(2);
const client = new TaggingClient({ target, token });
if (how === "tagMany") {
  const photo = readFileSync(path);
  // More items than the window: some are still being sent, some wait to be read, when the loop is left.
  const items = Array.from({ length: 40 }, () => ({ image: photo, bypassCache: true }));
  for await (const answer of client.tagMany(items, { window: 4 })) {
    if (!answer.ok) throw answer.error;
    break;
  }
  await client.close();
} else {
  for await (const event of importFolder(client, path, { bypassCache: true })) {
    if (event.type === "tagged") break;
  }
  await client[Symbol.asyncDispose]();
}
console.log("left the loop");
