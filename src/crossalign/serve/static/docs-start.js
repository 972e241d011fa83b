// Starts Swagger UI (/docs) or ReDoc (/redoc) over this service's OpenAPI description.
"use strict";
if (document.getElementById("swagger-ui")) {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
} else {
  Redoc.init("/openapi.json", {}, document.getElementById("redoc"));
}
