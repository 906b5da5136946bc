-- Argo CD health check for sealtune.io/FineTuneJob.
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
  hs.message = "Waiting for the Sealtune operator to pick up the job"
  return hs
end
local st = obj.status

-- A spec the operator has not seen yet: whatever status says is about an older spec.
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
  hs.message = text(failed, "FineTuneJob failed")
  return hs
end
if is_true(auditFailed) or (audit ~= nil and audit.status == "False" and audit.reason == "AuditFailed")
    or st.phase == "AuditFailed" then
  hs.status = "Degraded"
  hs.message = "Memorization audit failed: " .. text(auditFailed or audit, "AuditFailed")
  return hs
end
if st.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = text(condition(st, "Succeeded"), "FineTuneJob succeeded")
  return hs
end

local queued = condition(st, "Queued")
if is_true(queued) or st.phase == "Queued" or st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = text(queued, "Queued in Kueue, waiting for quota")
  return hs
end

hs.status = "Progressing"
local p = st.progress
if st.phase == "Running" and p ~= nil and p.step ~= nil and p.total ~= nil and p.total > 0 then
  hs.message = "Training: step " .. tostring(math.floor(p.step)) .. "/" .. tostring(math.floor(p.total))
else
  local running = condition(st, "Running")
  local resources = condition(st, "ResourcesReady")
  hs.message = text(is_true(running) and running or resources, "Phase " .. tostring(st.phase or "Pending"))
end
return hs
