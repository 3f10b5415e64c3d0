// importFolder in a process of its own, as an app runs it: the tests kill it midway (kill -9) and run it
// again. Prints each event as a JSON line. Usage: node import.mjs TARGET TOKEN FOLDER LEDGER
import { importFolder, TaggingClient } from "../../dist/esm/index.js";

const [target, token, folder, ledger] = process.argv.slice(2);
const client = new TaggingClient({ target, token });
try {
  // bypassCache: the copies are the same photos; the models answer each (and it takes a while).
  for await (const event of importFolder(client, folder, { ledger, window: 2, bypassCache: true, maxTags: 3 })) {
    console.log(JSON.stringify(event));
  }
} finally {
  await client.close();
}
