-- Envoy's first HTTP filter (envoy.yaml): what the REST transcoder and gRPC would get wrong or
-- answer badly, refused here with a clear status.
--
-- Requests:
-- * grpc-web bodies too short to hold a message (under 5 bytes): INVALID_ARGUMENT at once. gRPC
--   Python never answers a unary call that ends without its message, so the route timeout would
--   answer 504 ten seconds later.
-- * REST URLs longer than any of ours: 414, rather than passed on, where gRPC would count their copy
--   in x-envoy-original-path against its metadata limit.
-- * REST bodies: not JSON, 415; over 64 KB, 413 (as the transcoder's own limit); a field the
--   request does not have, or a value of the wrong JSON type, 400 naming the field. The transcoder
--   drops unknown fields silently (a misspelt request_id would lose idempotency without a word) and
--   takes a lone number for a list.
-- Responses: successful REST replies must not leak gRPC's status headers.
--
-- Local replies to /v1/ paths become JSON ({"status", "message"}) by envoy.yaml's local_reply_config.

local MAX_BODY_BYTES = 65536

-- The fields of each REST request body, by proto name (a body may use the JSON name, fileIds for
-- file_ids, instead), and the JSON types each accepts (proto3 JSON takes integers and enums as numbers or strings). Path-bound fields are
-- not body fields. tests/gateway/test_rest_contract.py holds this table to the contract.
local INITIATE = {file_ids = "array", request_id = "string", priority = "string number", callback_url = "string"}
local CHECK = {file_id = "number string"}
local RETRY = {request_id = "string"}
local BULK = {job_ids = "array", filter = "object", all = "boolean string"}
local PAUSE = {reason = "string", retry_after = "string"}
local NONE = {}
local function body_fields(path)
  if path == "/v1/download/initiate" then return INITIATE end
  if path == "/v1/download/check" then return CHECK end
  if path:match("^/v1/download/[^/]+:cancel$") or path:match("^/v1/operations/.+:cancel$") then return NONE end
  if path:match("^/v1/download/[^/]+:retry$") then return RETRY end
  if path == "/v1/admin/dead-letters:retry" or path == "/v1/admin/dead-letters:discard" then return BULK end
  if path == "/v1/admin/intake:pause" then return PAUSE end
  if path == "/v1/admin/intake:resume" then return NONE end
  return nil -- not a POST with a body of ours: the transcoder answers it
end

-- A JSON scanner just deep enough to list a body's top-level fields and the type of each value.
-- Anything it cannot read is left to the transcoder, which refuses malformed JSON with a 400.
local function skip_space(s, i)
  return s:find("[^ \t\r\n]", i) or #s + 1
end

local function after_string(s, i) -- s[i] is the opening quote
  local j = i + 1
  while true do
    local k = s:find('["\\]', j)
    if not k then return nil end
    if s:sub(k, k) == '"' then return k + 1 end
    j = k + 2
  end
end

local function after_value(s, i) -- returns the index after the value, and its JSON type
  local c = s:sub(i, i)
  if c == '"' then return after_string(s, i), "string" end
  if c == "{" or c == "[" then
    local depth, j = 0, i
    while true do
      local k = s:find('[%[%]{}"]', j)
      if not k then return nil end
      local ch = s:sub(k, k)
      if ch == '"' then
        j = after_string(s, k)
        if not j then return nil end
      else
        depth = depth + ((ch == "{" or ch == "[") and 1 or -1)
        j = k + 1
        if depth == 0 then return j, c == "{" and "object" or "array" end
      end
    end
  end
  local word = s:match("^[%w%.%+%-]+", i)
  if not word then return nil end
  local kind = (word == "true" or word == "false") and "boolean" or (word == "null" and "null" or "number")
  return i + #word, kind
end

local function top_level_fields(s) -- {{name, type}, ...}, or nil when the body is not a JSON object
  local i = skip_space(s, 1)
  if s:sub(i, i) ~= "{" then return nil end
  i = skip_space(s, i + 1)
  local fields = {}
  if s:sub(i, i) == "}" then return fields end
  while true do
    if s:sub(i, i) ~= '"' then return nil end
    local j = after_string(s, i)
    if not j then return nil end
    local name = s:sub(i + 1, j - 2)
    i = skip_space(s, j)
    if s:sub(i, i) ~= ":" then return nil end
    local after, kind = after_value(s, skip_space(s, i + 1))
    if not after then return nil end
    fields[#fields + 1] = {name, kind}
    i = skip_space(s, after)
    local c = s:sub(i, i)
    if c == "}" then return fields end
    if c ~= "," then return nil end
    i = skip_space(s, i + 1)
  end
end

local function proto_name(name) -- fileIds -> file_ids
  return (name:gsub("%u", function(upper) return "_" .. upper:lower() end))
end

local function names_of(allowed)
  local names = {}
  for name in pairs(allowed) do names[#names + 1] = name end
  table.sort(names)
  return #names > 0 and table.concat(names, ", ") or "none"
end

local function body_mistake(body, allowed) -- a message naming the first bad field, or nil
  local fields = top_level_fields(body)
  if not fields then return nil end
  for _, field in ipairs(fields) do
    local name, kind = field[1], field[2]
    local accepted = allowed[name] or allowed[proto_name(name)]
    if not accepted then
      return string.format('unknown field "%s" in the request body; its fields are: %s', name, names_of(allowed))
    end
    if kind ~= "null" and not accepted:find(kind, 1, true) then
      return string.format('field "%s" must be a JSON %s, not a %s', name, accepted:gsub(" ", " or "), kind)
    end
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path") or ""
  local kind = (headers:get("content-type") or ""):lower()
  if kind:find("application/grpc-web", 1, true) and tonumber(headers:get("content-length") or "5") < 5 then
    handle:respond({[":status"] = "200", ["content-type"] = kind, ["grpc-status"] = "3",
      ["grpc-message"] = "the call carried no request message",
      ["access-control-allow-origin"] = headers:get("origin") or "*",
      ["access-control-expose-headers"] = "grpc-status, grpc-message"}, "")
    return
  end
  if path:sub(1, 4) ~= "/v1/" then return end
  if #path > 4096 then
    handle:respond({[":status"] = "414"}, "the URL is longer than 4096 bytes: no Longhaul URL is")
    return
  end
  if headers:get(":method") ~= "POST" then return end
  local length = headers:get("content-length")
  local has_body = length ~= "0" and (length ~= nil or headers:get("transfer-encoding") ~= nil)
  if not has_body then return end
  if not kind:find("application/json", 1, true) then
    handle:respond({[":status"] = "415"}, "send the request body as JSON, with the header content-type: application/json")
    return
  end
  if tonumber(length or "0") > MAX_BODY_BYTES then
    handle:respond({[":status"] = "413"}, "the request body is over 64 KB; no Longhaul request needs more")
    return
  end
  local allowed = body_fields((path:gsub("%?.*", "")))
  if not allowed then return end
  local buffered = handle:body()
  if not buffered then return end
  if buffered:length() > MAX_BODY_BYTES then
    handle:respond({[":status"] = "413"}, "the request body is over 64 KB; no Longhaul request needs more")
    return
  end
  local mistake = body_mistake(buffered:getBytes(0, buffered:length()), allowed)
  if mistake then handle:respond({[":status"] = "400"}, mistake) end
end

function envoy_on_response(handle)
  local kind = handle:headers():get("content-type") or ""
  if kind:find("application/json", 1, true) or kind:find("text/event-stream", 1, true) then
    handle:headers():remove("grpc-status")
    handle:headers():remove("grpc-message")
  end
end
