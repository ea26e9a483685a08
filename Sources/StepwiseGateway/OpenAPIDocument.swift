/// The OpenAPI 3.0 document of the gateway's API, served at `/openapi.json`.
///
/// It is a resource file (`Web/openapi.json`); a test checks that every route the gateway serves
/// is in it and that every documented path is served.
public enum OpenAPIDocument {
    /// The document's JSON text.
    public static let text = String(decoding: PackageResources.openapi_json, as: UTF8.self)
}
