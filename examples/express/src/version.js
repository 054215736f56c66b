module.exports = { VERSION: "1" };
