// The build step (`npm run build`): writes dist/version.json from src/version.js, so the artifact holds
// what the build made, not only the sources.
const fs = require("fs");
const { VERSION } = require("./src/version");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/version.json", JSON.stringify({ version: VERSION }) + "\n");
