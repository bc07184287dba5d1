// Swagger UI on this service's own description; nothing is loaded from elsewhere.
"use strict";
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
