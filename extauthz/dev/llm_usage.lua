-- extauthz on LLM routes, inside Envoy (docs/llm.md#tokens-counted-from-responses): the
-- request body edits extauthz's decision asks for, and the usage of the response read as it
-- streams past.
-- extauthz/dev/envoy_config.py puts this file into the Envoy config (a Lua filter after
-- ext_authz, disabled on every other route). Nothing here waits for extauthz: the usage is
-- written to dynamic metadata (`extauthz.usage`), and the access log sends one record per
-- response to extauthz (AccessLogService), which charges it; a record that never arrives
-- leaves the request's reservation charged.
--
-- Every loop is linear in the bytes it sees, and what is held is bounded: an SSE event
-- longer than MAX_EVENT is passed on unread, a JSON body is searched in its last MAX_TAIL
-- bytes only.

local AUTHZ = "envoy.filters.http.ext_authz"
local OURS = "extauthz.usage"
local MAX_EVENT = 1048576
local MAX_TAIL = 65536
local MAX_WHOLE = 1048576  -- a Responses API JSON body is read whole up to this
local MAX_USAGE = 4096
local UNAVAILABLE = '{"error": "counting_unavailable", "message": ' ..
  '"the tokens of this request cannot be bounded now; retry later"}'

-- The `{...}` object that starts at `open` in `text` (braces matched outside strings), if
-- it is short, ASCII and free of control characters but whitespace (extauthz parses it);
-- else nil.
local function object_at(text, open)
  local depth, quoted = 0, false
  local i, last = open, math.min(#text, open + MAX_USAGE)
  while i <= last do
    local c = string.byte(text, i)
    if quoted then
      if c == 92 then i = i + 1 elseif c == 34 then quoted = false end
    elseif c == 34 then
      quoted = true
    elseif c == 123 then
      depth = depth + 1
    elseif c == 125 then
      depth = depth - 1
      if depth == 0 then
        local found = string.sub(text, open, i)
        if string.find(found, "[%z\1-\8\11\12\14-\31\127-\255]") then return nil end
        return found
      end
    end
    i = i + 1
  end
  return nil
end

-- The last `"usage": {...}` object in `text` (inside a JSON string every quote is escaped,
-- so `"usage"` there never matches). Where a server echoes objects the client wrote (the
-- Responses API's `tools`, `text.format`), a forged `"usage"` key can be among them: with
-- `level`, only a key of an object that many brackets deep counts (1: the top-level
-- object's own key).
local function usage_object(text, level)
  if string.find(text, '"usage"%s*:%s*{') == nil then return nil end
  local open = nil
  if level == nil then
    local from = 1
    while true do
      local _, e = string.find(text, '"usage"%s*:%s*{', from)
      if e == nil then break end
      open = e
      from = e + 1
    end
  else
    local deep, quoted, i, n = 0, false, 1, #text
    while i <= n do
      local c = string.byte(text, i)
      if quoted then
        if c == 92 then i = i + 1 elseif c == 34 then quoted = false end
      elseif c == 34 then
        if deep == level then
          local _, e = string.find(text, '^"usage"%s*:%s*{', i)
          if e ~= nil then open = e end
        end
        quoted = true
      elseif c == 123 or c == 91 then
        deep = deep + 1
      elseif c == 125 or c == 93 then
        deep = deep - 1
      end
      i = i + 1
    end
  end
  if open == nil then return nil end
  return object_at(text, open)
end

-- The body with extauthz's splices applied: `spec` is "<length>\n" then "<start> <end>
-- <text>\n" per splice, in order, offsets into the body extauthz read. nil when the body
-- is not that body.
local function edited(body, spec)
  local length, rest = string.match(spec, "^(%d+)\n(.*)$")
  if length == nil or tonumber(length) ~= #body then return nil end
  local out, at = {}, 0
  for s, e, text in string.gmatch(rest, "(%d+) (%d+) ([^\n]*)\n") do
    s, e = tonumber(s), tonumber(e)
    if s < at or e < s or e > #body then return nil end
    out[#out + 1] = string.sub(body, at + 1, s)
    out[#out + 1] = text
    at = e
  end
  out[#out + 1] = string.sub(body, at + 1)
  return table.concat(out)
end

function envoy_on_request(handle)
  local authz = handle:streamInfo():dynamicMetadata():get(AUTHZ)
  if authz == nil or authz["edit"] == nil then return end
  local spec = authz["edit"]
  local body = handle:body()
  local new = nil
  if body ~= nil then new = edited(body:getBytes(0, body:length()), spec) end
  if new == nil then  -- (never to the model without its cap)
    handle:respond({[":status"] = "503", ["content-type"] = "application/json"}, UNAVAILABLE)
    return
  end
  body:setBytes(new)
end

local function note(handle, key, value)
  handle:streamInfo():dynamicMetadata():set(OURS, key, value)
end

-- A JSON body: its last MAX_TAIL bytes searched, or (`whole`: a server that echoes the
-- client's objects) the whole body up to MAX_WHOLE, for a top-level usage only.
local function read_json(handle, whole)
  local tail, pieces, size = "", {}, 0
  for chunk in handle:bodyChunks() do
    local n = chunk:length()
    if n > 0 then
      if whole then
        size = size + n
        if size <= MAX_WHOLE then pieces[#pieces + 1] = chunk:getBytes(0, n) end
      else
        local take = math.min(n, MAX_TAIL)
        tail = string.sub(tail .. chunk:getBytes(n - take, take), -MAX_TAIL)
      end
    end
  end
  local usage = nil
  if not whole then
    usage = usage_object(tail)
  elseif size <= MAX_WHOLE then
    usage = usage_object(table.concat(pieces), 1)
  end
  if usage ~= nil then note(handle, "usage", usage) end
end

-- An SSE stream, event by event. `strip`: the usage chunk extauthz asked for (`choices`
-- empty, a usage) is taken out; the unfinished event is then held back from the client.
local function read_events(handle, strip, level)
  local held, held_size, tail = {}, 0, ""  -- the unfinished event: its pieces, size, last bytes
  local skipping = false  -- in an event longer than MAX_EVENT
  local last = nil
  local content = 0  -- events with text in them (an estimate: a metric, never the charge)
  for chunk in handle:bodyChunks() do
    last = chunk
    local n = chunk:length()
    local data = n > 0 and chunk:getBytes(0, n) or ""
    local out = {}
    local pos = 1
    local stripping = strip  -- (this chunk's bytes are replaced by `out`)
    -- (an event's end may start in the bytes held: search them again, never more)
    local s, e = string.find(tail .. data, "\r?\n\r?\n")
    if e ~= nil then e = e - #tail end
    while e ~= nil do
      if skipping then
        skipping = false
      else
        held[#held + 1] = string.sub(data, pos, e)
        local event = table.concat(held)
        local dropped = false
        if string.find(event, '"usage"', 1, true) then
          local usage = usage_object(event, level)
          if usage ~= nil then
            note(handle, "usage", usage)  -- (at once: a reset stream still has it)
            dropped = strip and string.find(event, '"choices"%s*:%s*%[%s*%]') ~= nil
          end
        end
        if string.find(event, '"content"%s*:%s*"[^"]') or
            string.find(event, '"text"%s*:%s*"[^"]') or
            string.find(event, '"delta"%s*:%s*"[^"]') then
          content = content + 1
        end
        if string.find(event, "^data:%s*%[DONE%]") then
          -- (at once: a client may go away right after the last event it waits for)
          note(handle, "content_events", tostring(content))
        end
        if strip and not dropped then out[#out + 1] = event end
      end
      held, held_size = {}, 0
      pos = e + 1
      s, e = string.find(data, "\r?\n\r?\n", pos)
    end
    local rest = string.sub(data, pos)
    if not skipping and #rest > 0 then
      held[#held + 1] = rest
      held_size = held_size + #rest
      if held_size > MAX_EVENT then
        if strip then  -- (too long to hold back: the rest passes as it comes)
          out[#out + 1] = table.concat(held)
          strip = false
        end
        held, held_size, skipping = {}, 0, true
      end
    end
    if pos > 1 then tail = string.sub(rest, -3) else tail = string.sub(tail .. rest, -3) end
    if stripping then chunk:setBytes(table.concat(out)) end
  end
  if strip and held_size > 0 and last ~= nil then  -- an unfinished last event: let it go
    -- (not when the stream ended with trailers: that chunk is gone; the event is lost)
    pcall(function() last:setBytes(last:getBytes(0, last:length()) .. table.concat(held)) end)
  end
  note(handle, "content_events", tostring(content))
end

function envoy_on_response(handle)
  local authz = handle:streamInfo():dynamicMetadata():get(AUTHZ)
  if authz == nil or authz["model"] == nil then return end
  local headers = handle:headers()
  local status = headers:get(":status")
  local kind = string.lower(headers:get("content-type") or "")
  local encoding = headers:get("content-encoding")
  note(handle, "v", "1")
  if encoding ~= nil and string.lower(encoding) ~= "identity" then
    note(handle, "unread", "content-encoding")  -- (charged its whole reservation)
    return
  end
  local stream = string.find(kind, "text/event-stream", 1, true) == 1
  local strip = stream and authz["strip_usage"] == "1" and status == "200"
  if strip then headers:remove("content-length") end
  -- the usage is a key of the top-level object (chat, completions, embeddings, a Responses
  -- API body) or of its `response` (a Responses API stream event)
  local responses = authz["api"] == "responses"
  if stream then
    read_events(handle, strip, responses and 2 or 1)
  else
    read_json(handle, responses)
  end
  note(handle, "complete", "1")
end
