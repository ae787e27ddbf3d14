-- wrk script: POST {"secret": $SECRET} with the data-plane token $DP_TOKEN.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("DP_TOKEN") or "none")
wrk.body = '{"secret":"' .. (os.getenv("SECRET") or "none") .. '"}'
