-- Argo CD health check for sealtune.io/ModelServe.
-- Written for Lua 5.1 (Argo CD runs gopher-lua); tests run it under lua5.1 and lua5.4.
local function condition(st, ctype)
  if st.conditions == nil then return nil end
  for _, c in ipairs(st.conditions) do
    if c.type == ctype then return c end
  end
  return nil
end

local function is_true(c) return c ~= nil and c.status == "True" end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then return c.reason end
  return fallback
end

local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Sealtune operator to pick up the ModelServe"
  return hs
end
local st = obj.status

local gen = obj.metadata ~= nil and obj.metadata.generation or nil
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(gen)
  return hs
end

local failed = condition(st, "Failed")
local audit = condition(st, "AuditPassed")
local auditFailed = condition(st, "AuditFailed")
if st.phase == "Failed" or is_true(failed) then
  hs.status = "Degraded"
  hs.message = text(failed or condition(st, "AdapterNotReady"), "ModelServe failed")
  return hs
end
if is_true(auditFailed) or (audit ~= nil and audit.status == "False" and audit.reason == "AuditFailed") then
  hs.status = "Degraded"
  hs.message = "Adapter failed its memorization audit: " .. text(auditFailed or audit, "AuditFailed")
  return hs
end
if st.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = text(condition(st, "Available") or condition(st, "Ready"), "ModelServe degraded")
  return hs
end

local queued = condition(st, "Queued")
if is_true(queued) or st.phase == "Queued" or st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = text(queued, "Queued in Kueue, waiting for quota")
  return hs
end

local ready = condition(st, "Ready")
if st.phase == "Ready" and (ready == nil or ready.status == "True") then
  hs.status = "Healthy"
  if st.endpoint ~= nil then
    hs.message = "Serving at " .. st.endpoint
  else
    hs.message = text(ready, "ModelServe ready")
  end
  return hs
end

hs.status = "Progressing"
local adapter = condition(st, "AdapterNotReady")
if is_true(adapter) then
  hs.message = text(adapter, "Waiting for the adapter")
elseif st.readyReplicas ~= nil then
  hs.message = "Ready replicas: " .. tostring(st.readyReplicas)
else
  hs.message = text(ready, "Phase " .. tostring(st.phase or "Pending"))
end
return hs
