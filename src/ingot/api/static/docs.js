// The API's reference page: Swagger UI served by ingot itself (no third-party CDN), reading /openapi.json.
// "Authorize" takes the bearer token ('ingot token show'); Swagger UI keeps it in this page only.
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
