const express = require("express");
const { version } = require("./dist/version.json");

const app = express();
app.get("/healthz", (_req, res) => res.type("text/plain").send("ok\n"));
app.get("/", (_req, res) => res.json({ version, release: process.env.INGOT_RELEASE || null }));

const port = Number(process.env.PORT || 8000);
const host = process.env.HOST || "127.0.0.1"; // a container sets 0.0.0.0
const server = app.listen(port, host, () => console.log(`listening on ${port}`));
// Stop accepting, finish what is in flight, then exit: ingot drains the router before it stops us.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
