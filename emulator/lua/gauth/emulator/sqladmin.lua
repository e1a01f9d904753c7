--- The Discovery documents of the part of the Cloud SQL Admin API that
-- gauth's emulator serves: `instances` list/get/insert/delete and
-- `operations` get. Written for gauth (not a copy of Google's file), small
-- but complete enough for a Discovery client: standard parameters, scopes,
-- schemas, methods with path, parameters and parameterOrder.
-- @module gauth.emulator.sqladmin

local pairs = pairs
local tostring = tostring

local _M = { _VERSION = "0.1.0" }

local SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local SCOPE_SQL = "https://www.googleapis.com/auth/sqlservice.admin"
_M.SCOPES = { SCOPE_PLATFORM, SCOPE_SQL }

--- Path prefix (after the root URL) of each version, as Google lays them
-- out: v1beta4 lives under `sql/v1beta4/`, v1 under `v1/`.
_M.PREFIXES = { v1beta4 = "sql/v1beta4/", v1 = "v1/" }

local function qstring(description, extra)
  local p = { type = "string", location = "query", description = description }
  if extra then for k, v in pairs(extra) do p[k] = v end end
  return p
end

-- The query parameters every Google API accepts.
local function standard_parameters()
  return {
    ["$.xgafv"] = qstring("V1 error format.", {
      enum = { "1", "2" },
      enumDescriptions = { "v1 error format", "v2 error format" } }),
    access_token = qstring("OAuth access token."),
    alt = qstring("Data format for response.", {
      default = "json", enum = { "json", "media", "proto" },
      enumDescriptions = { "Responses with Content-Type of application/json",
                           "Media download with context-dependent Content-Type",
                           "Responses with Content-Type of application/x-protobuf" } }),
    callback = qstring("JSONP"),
    fields = qstring("Selector specifying which fields to include in a partial response."),
    key = qstring("API key."),
    oauth_token = qstring("OAuth 2.0 token for the current user."),
    prettyPrint = { type = "boolean", location = "query", default = "true",
                    description = "Returns response with indentations and line breaks." },
    quotaUser = qstring("Quota user."),
    uploadType = qstring("Legacy upload protocol for media (e.g. \"media\", \"multipart\")."),
    upload_protocol = qstring("Upload protocol for media (e.g. \"raw\", \"multipart\")."),
  }
end

local function path_param(description)
  return { type = "string", location = "path", required = true,
           description = description }
end

local function ref(name) return { ["$ref"] = name } end

local function schemas()
  return {
    DatabaseInstance = {
      id = "DatabaseInstance", type = "object",
      description = "A Cloud SQL instance resource.",
      properties = {
        kind = { type = "string", description = "This is always `sql#instance`." },
        name = { type = "string",
                 description = "Name of the Cloud SQL instance. This does not include the project ID." },
        project = { type = "string", description = "The project ID of the project containing the instance." },
        databaseVersion = { type = "string",
                            description = "The database engine and version, e.g. MYSQL_8_0 or POSTGRES_15." },
        region = { type = "string", description = "The geographical region, e.g. us-central1." },
        gceZone = { type = "string", description = "The Compute Engine zone the instance is serving from." },
        state = { type = "string", description = "The current serving state of the instance.",
                  enum = { "SQL_INSTANCE_STATE_UNSPECIFIED", "RUNNABLE", "SUSPENDED",
                           "PENDING_DELETE", "PENDING_CREATE", "MAINTENANCE", "FAILED" } },
        backendType = { type = "string", description = "The backend type, e.g. SECOND_GEN." },
        instanceType = { type = "string", description = "The instance type, e.g. CLOUD_SQL_INSTANCE." },
        connectionName = { type = "string", description = "Connection name, as project:region:instance." },
        createTime = { type = "string", format = "google-datetime",
                       description = "When the instance was created (RFC 3339)." },
        selfLink = { type = "string", description = "The URI of this resource." },
        settings = ref("Settings"),
        ipAddresses = { type = "array", items = ref("IpMapping"),
                        description = "The assigned IP addresses of the instance." },
      },
    },
    Settings = {
      id = "Settings", type = "object", description = "Database instance settings.",
      properties = {
        kind = { type = "string", description = "This is always `sql#settings`." },
        tier = { type = "string", description = "The machine tier, e.g. db-f1-micro." },
        dataDiskSizeGb = { type = "string", format = "int64", description = "The size of the data disk, in GB." },
        activationPolicy = { type = "string", description = "ALWAYS, NEVER or ON_DEMAND." },
        userLabels = { type = "object", additionalProperties = { type = "string" },
                       description = "User-provided labels." },
      },
    },
    IpMapping = {
      id = "IpMapping", type = "object", description = "An IP address assigned to an instance.",
      properties = {
        type = { type = "string", description = "PRIMARY, OUTGOING or PRIVATE." },
        ipAddress = { type = "string", description = "The IP address." },
      },
    },
    InstancesListResponse = {
      id = "InstancesListResponse", type = "object",
      description = "Database instances list response.",
      properties = {
        kind = { type = "string", description = "This is always `sql#instancesList`." },
        items = { type = "array", items = ref("DatabaseInstance"),
                  description = "List of database instance resources." },
        nextPageToken = { type = "string",
                          description = "The continuation token, used to page through large result sets." },
      },
    },
    Operation = {
      id = "Operation", type = "object",
      description = "A long-running operation on a Cloud SQL resource.",
      properties = {
        kind = { type = "string", description = "This is always `sql#operation`." },
        name = { type = "string", description = "An identifier that uniquely identifies the operation." },
        operationType = { type = "string", description = "The type of the operation, e.g. CREATE or DELETE." },
        status = { type = "string", description = "The status of the operation.",
                   enum = { "SQL_OPERATION_STATUS_UNSPECIFIED", "PENDING", "RUNNING", "DONE" } },
        targetId = { type = "string", description = "Name of the resource the operation acts on." },
        targetProject = { type = "string", description = "The project ID of the target instance." },
        targetLink = { type = "string", description = "The URI of the target resource." },
        selfLink = { type = "string", description = "The URI of this resource." },
        user = { type = "string", description = "The email address of the user who started the operation." },
        insertTime = { type = "string", format = "google-datetime", description = "When the operation was enqueued." },
        startTime = { type = "string", format = "google-datetime", description = "When the operation started." },
        endTime = { type = "string", format = "google-datetime", description = "When the operation finished." },
        error = ref("OperationErrors"),
      },
    },
    OperationErrors = {
      id = "OperationErrors", type = "object", description = "Errors of an operation.",
      properties = {
        kind = { type = "string", description = "This is always `sql#operationErrors`." },
        errors = { type = "array", items = ref("OperationError"), description = "The list of errors." },
      },
    },
    OperationError = {
      id = "OperationError", type = "object", description = "One error of an operation.",
      properties = {
        kind = { type = "string", description = "This is always `sql#operationError`." },
        code = { type = "string", description = "Identifies the specific error that occurred." },
        message = { type = "string", description = "Additional information about the error." },
      },
    },
  }
end

local function method(id, http_method, path, order, params, description,
                      request, response)
  return {
    id = id,
    path = path,
    flatPath = path,
    httpMethod = http_method,
    description = description,
    parameters = params,
    parameterOrder = order,
    request = request and ref(request) or nil,
    response = ref(response),
    scopes = { SCOPE_PLATFORM, SCOPE_SQL },
  }
end

--- Build the Discovery document of one version.
-- @tparam string version "v1beta4" (default) or "v1"
-- @tparam[opt] string root_url the emulator's URL with a trailing slash;
-- a placeholder until the server knows its port
-- @return the document as a Lua table (a fresh one on every call), or nil
-- and a message for an unknown version
function _M.document(version, root_url)
  version = version or "v1beta4"
  local prefix = _M.PREFIXES[version]
  if not prefix then return nil, "no sqladmin " .. tostring(version) .. " here" end
  root_url = root_url or "http://127.0.0.1/"
  local instances = prefix .. "projects/{project}/instances"
  local instance = instances .. "/{instance}"
  local operation = prefix .. "projects/{project}/operations/{operation}"
  return {
    kind = "discovery#restDescription",
    discoveryVersion = "v1",
    id = "sqladmin:" .. version,
    name = "sqladmin",
    canonicalName = "SQL Admin",
    version = version,
    revision = "20240101",
    title = "Cloud SQL Admin API (gauth emulator)",
    description = "The part of the Cloud SQL Admin API that gauth's emulator "
      .. "serves: instances list, get, insert and delete, and operations get.",
    ownerDomain = "google.com",
    ownerName = "Google",
    documentationLink = "https://cloud.google.com/sql/docs",
    protocol = "rest",
    rootUrl = root_url,
    mtlsRootUrl = root_url,
    servicePath = "",
    basePath = "",
    baseUrl = root_url,
    batchPath = "batch",
    fullyEncodeReservedExpansion = true,
    parameters = standard_parameters(),
    auth = { oauth2 = { scopes = {
      [SCOPE_PLATFORM] = { description = "See, edit, configure, and delete your Google Cloud data." },
      [SCOPE_SQL] = { description = "Manage your Google SQL Service instances" },
    } } },
    schemas = schemas(),
    resources = {
      instances = { methods = {
        list = method("sql.instances.list", "GET", instances, { "project" }, {
          project = path_param("Project ID of the project for which to list Cloud SQL instances."),
          maxResults = { type = "integer", format = "uint32", location = "query",
                         description = "The maximum number of instances to return (default 500, at most 1000)." },
          pageToken = { type = "string", location = "query",
                        description = "A page token returned by a previous call, to get the next page." },
        }, "Lists instances under a given project.", nil, "InstancesListResponse"),
        get = method("sql.instances.get", "GET", instance, { "project", "instance" }, {
          project = path_param("Project ID of the project that contains the instance."),
          instance = path_param("Database instance ID. This does not include the project ID."),
        }, "Retrieves a resource containing information about a Cloud SQL instance.",
          nil, "DatabaseInstance"),
        insert = method("sql.instances.insert", "POST", instances, { "project" }, {
          project = path_param("Project ID of the project the new Cloud SQL instance belongs to."),
        }, "Creates a new Cloud SQL instance.", "DatabaseInstance", "Operation"),
        delete = method("sql.instances.delete", "DELETE", instance, { "project", "instance" }, {
          project = path_param("Project ID of the project that contains the instance to be deleted."),
          instance = path_param("Cloud SQL instance ID. This does not include the project ID."),
        }, "Deletes a Cloud SQL instance.", nil, "Operation"),
      } },
      operations = { methods = {
        get = method("sql.operations.get", "GET", operation, { "project", "operation" }, {
          project = path_param("Project ID of the project that contains the instance."),
          operation = path_param("Instance operation ID."),
        }, "Retrieves an instance operation that has been performed on an instance.",
          nil, "Operation"),
      } },
    },
  }
end

return _M
