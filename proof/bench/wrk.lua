-- wrk script for proof/bench/bench.py: prints one JSON line of figures when a run ends.
-- With NOTES_MIX=1, each connection alternates POST /api/notes and a GET of the note that POST created (from its
-- Location header): half writes, half reads of fresh rows. Without it, wrk sends its own static GET of the URL.

if os.getenv("NOTES_MIX") == "1" then
  local created = {}
  local counter = 0

  request = function()
    local location = table.remove(created)
    if location then
      return wrk.format("GET", location)
    end
    counter = counter + 1
    return wrk.format("POST", "/api/notes", {["Content-Type"] = "application/json"},
                      string.format('{"text": "bench note %d"}', counter))
  end

  response = function(status, headers, body)
    if status == 201 then
      table.insert(created, headers["Location"])
    end
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "p50_ms": %.2f, "p99_ms": %.2f, "errors": %d, "non_2xx_3xx": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    errors.connect + errors.read + errors.write + errors.timeout + errors.status, errors.status))
end
