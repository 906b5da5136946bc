-- Argo CD health check for sealtune.io/FineTuneJob.
-- Written for Lua 5.1 (Argo CD runs gopher-lua); tests run it under lua5.1 and lua5.4.
-- The operator's `Ready` condition explains the phase: its message is the health message.
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
  return {status = "Progressing", message = "Waiting for the Sealtune operator to pick up the job"}
end
-- A spec the operator has not seen yet: whatever status says is about an older spec.
local gen = obj.metadata ~= nil and obj.metadata.generation or nil
if gen ~= nil and (st.observedGeneration == nil or st.observedGeneration < gen) then
  return {status = "Progressing", message = "Waiting for the operator to observe generation " .. tostring(gen)}
end

local ready = condition(st, "Ready")
local failed = condition(st, "Failed")
if st.phase == "Failed" or (failed ~= nil and failed.status == "True") then
  return {status = "Degraded", message = text(ready or failed, "FineTuneJob failed")}
end
local audit = condition(st, "AuditPassed")
local auditFailed = condition(st, "AuditFailed")
if (auditFailed ~= nil and auditFailed.status == "True")
    or (audit ~= nil and audit.status == "False" and audit.reason == "AuditFailed") then
  return {status = "Degraded", message = "Memorization audit failed: " .. text(auditFailed or audit, "AuditFailed")}
end
if st.phase == "Succeeded" then
  return {status = "Healthy", message = text(ready or condition(st, "Succeeded"), "FineTuneJob succeeded")}
end
local queued = condition(st, "Queued")
if st.phase == "Queued" or st.phase == "Suspended" or (queued ~= nil and queued.status == "True") then
  return {status = "Suspended", message = text(queued, "Queued in Kueue, waiting for quota")}
end

local p = st.progress
if st.phase == "Running" and p ~= nil and p.step ~= nil and (p.totalSteps or 0) > 0 then
  local steps = "Training: step " .. tostring(math.floor(p.step)) .. "/" .. tostring(math.floor(p.totalSteps))
  return {status = "Progressing", message = steps}
end
local running = condition(st, "Running")
local why = ready or (running ~= nil and running.status == "True" and running) or condition(st, "ResourcesReady")
return {status = "Progressing", message = text(why, "Phase " .. tostring(st.phase or "Pending"))}
