-- Argo CD health check for sealtune.io/ModelServe.
-- Written for Lua 5.1 (Argo CD runs gopher-lua); tests run it under lua5.1 and lua5.4.
-- Healthy while serving (phase Ready); `Ready`, `AdapterReady` and `Available` say why not.
local function condition(st, ctype)
  for _, c in ipairs(st.conditions or {}) do
    if c.type == ctype then return c end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then return c.reason end
  return fallback
end

local st = obj.status
if st == nil then
  return {status = "Progressing", message = "Waiting for the Sealtune operator to pick up the ModelServe"}
end
local gen = obj.metadata ~= nil and obj.metadata.generation or nil
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  return {status = "Progressing", message = "Waiting for the operator to observe generation " .. tostring(gen)}
end

local ready = condition(st, "Ready")
-- `AdapterNotReady` (True = no adapter) is what operators before AdapterReady wrote.
local adapter = condition(st, "AdapterReady")
local legacy = condition(st, "AdapterNotReady")
local noAdapter = (adapter ~= nil and adapter.status == "False") or (legacy ~= nil and legacy.status == "True")
local failed = condition(st, "Failed")
if st.phase == "Failed" or (failed ~= nil and failed.status == "True") then
  return {status = "Degraded", message = text(failed or ready or adapter or legacy, "ModelServe failed")}
end
local audit = condition(st, "AuditPassed")
if audit ~= nil and audit.status == "False" and audit.reason == "AuditFailed" then
  return {status = "Degraded", message = "Adapter failed its memorization audit: " .. text(audit, "AuditFailed")}
end
if st.phase == "Degraded" then
  return {status = "Degraded", message = text(condition(st, "Available") or ready, "ModelServe degraded")}
end
local queued = condition(st, "Queued")
if st.phase == "Queued" or (queued ~= nil and queued.status == "True") then
  return {status = "Suspended", message = text(queued, "Queued, waiting for quota")}
end
if st.phase == "Ready" and (ready == nil or ready.status == "True") then
  if st.endpoint ~= nil then return {status = "Healthy", message = "Serving at " .. st.endpoint} end
  return {status = "Healthy", message = text(ready, "ModelServe ready")}
end

if noAdapter then
  return {status = "Progressing", message = text(adapter or legacy, "Waiting for the adapter")}
end
if ready == nil and st.readyReplicas ~= nil then
  return {status = "Progressing", message = "Ready replicas: " .. tostring(st.readyReplicas)}
end
return {status = "Progressing", message = text(ready, "Phase " .. tostring(st.phase or "Pending"))}
