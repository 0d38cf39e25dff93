# Runs `kakuremichi agent` as the current user at every logon, and again a minute after it stops: a
# scheduled task, which needs no administrator rights and no service wrapper (for a service that runs
# before anyone logs on, see README "Windows": NSSM). Not tested in CI, which has no Windows.
#   powershell -ExecutionPolicy Bypass -File install-agent-task.ps1 -ControlUrl https://control.example.com
# The agent's API key goes in the -ApiKeyFile file first; this script makes it readable by you alone.
param(
    [Parameter(Mandatory = $true)] [string] $ControlUrl,
    [string] $ApiKeyFile = "$env:LOCALAPPDATA\kakuremichi\agent.key",
    [string] $TaskName = "kakuremichi agent"
)
$ErrorActionPreference = "Stop"
$account = "${env:USERDOMAIN}\${env:USERNAME}"
$exe = (Get-Command kakuremichi.exe).Source
if (-not (Test-Path $ApiKeyFile)) { throw "put the agent's API key (agt_...) in $ApiKeyFile first" }
icacls $ApiKeyFile /inheritance:r /grant:r "${account}:F" | Out-Null
if ($LASTEXITCODE -ne 0) { throw "icacls could not make $ApiKeyFile readable by $account alone" }
$action = New-ScheduledTaskAction -Execute $exe -Argument "agent --control-url `"$ControlUrl`" --api-key-file `"$ApiKeyFile`""
$trigger = New-ScheduledTaskTrigger -AtLogOn -User $account
$settings = New-ScheduledTaskSettingsSet -RestartCount 9999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries
Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings -Force | Out-Null
Start-ScheduledTask -TaskName $TaskName
Write-Output "registered and started the scheduled task '$TaskName' ($exe agent, as $account)"
