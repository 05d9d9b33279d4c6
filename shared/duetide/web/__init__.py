"""The HTTP edge: limits, tokens, request and response shapes, routes, the OpenAPI
document, the bounded server and what every function does at start."""
